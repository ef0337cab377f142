package mux

import (
	"io"
	"time"
)

// allowanceLocked is the credit the guard can grant st now, beyond what it
// granted: up to consumed+window, and only once at least least is due.
// g.mu is held.
func (g *guard) allowanceLocked(st *gstream, least uint64) uint32 {
	target := st.consumed + uint64(st.window)
	if target <= st.given+uint64(st.pending) || target-st.given-uint64(st.pending) < least {
		return 0
	}
	return uint32(target - st.given - uint64(st.pending))
}

// readData copies what stream id received into p, and grants the peer more
// credit once a quarter window is due. With nothing buffered it returns the
// channel to wait on, or io.EOF after the peer's FIN; errStreamGone once the
// stream is reset or let go of. Called by Stream.Read.
func (g *guard) readData(id uint32, p []byte) (int, chan struct{}, error) {
	g.mu.Lock()
	st, wake, err := g.readableLocked(id)
	if st == nil {
		g.mu.Unlock()
		return 0, wake, err
	}
	n := st.rq.read(p)
	grant := g.consumedLocked(id, st, n)
	g.mu.Unlock()
	if grant {
		g.grantNow(id)
	}
	return n, nil, nil
}

// lendData is readData without the copy: it returns up to max received
// bytes of stream id where they are, valid until giveBackData. Called by
// Stream.Lend.
func (g *guard) lendData(id uint32, max int) ([]byte, chan struct{}, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	st, wake, err := g.readableLocked(id)
	if st == nil {
		return nil, wake, err
	}
	return st.rq.lend(max), nil, nil
}

// setSink sets stream id's sink (Stream.SetSink).
func (g *guard) setSink(id uint32, fn func([]byte) int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if st := g.streams[id]; st != nil {
		st.sink = fn
	}
}

// giveBackData ends a lendData of which n bytes were used.
func (g *guard) giveBackData(id uint32, n int) {
	g.mu.Lock()
	st := g.streams[id]
	if st == nil || !st.closedAt.IsZero() {
		g.mu.Unlock()
		return
	}
	st.rq.giveBack(n)
	grant := g.consumedLocked(id, st, n)
	g.mu.Unlock()
	if grant {
		g.grantNow(id)
	}
}

// readableLocked returns stream id if it has data to read; otherwise the
// channel to wait on, or io.EOF after the peer's FIN, or errStreamGone.
// g.mu is held.
func (g *guard) readableLocked(id uint32) (*gstream, chan struct{}, error) {
	st := g.streams[id]
	switch {
	case st == nil || !st.closedAt.IsZero():
		return nil, nil, errStreamGone
	case st.sinking:
		return nil, st.rwake, nil // the sink holds the first bytes; it pokes if it leaves any
	case st.rq.n > 0:
		return st, nil, nil
	case st.rfin:
		return nil, nil, io.EOF
	}
	return nil, st.rwake, nil
}

// consumedLocked records that the application took n bytes of st, tunes
// its window, and reports whether credit is due to the peer: half a window,
// as yamux grants, on a short path, where the grant is back with the sender
// at once; a quarter window on a long one, where half a window would leave a
// window-limited stream idle for half of each round trip. Each grant is a
// frame, a TLS record and a syscall, so the larger step is taken where it
// costs no throughput. g.mu is held.
func (g *guard) consumedLocked(id uint32, st *gstream, n int) bool {
	st.consumed += uint64(n)
	g.budget.Free(int64(n))
	g.tuneLocked(st)
	least := uint64(st.window / 2)
	if g.rtt > tuneEpoch {
		least = uint64(st.window / 4)
	}
	grant := g.allowanceLocked(st, least)
	if grant == 0 {
		return false
	}
	if st.pending == 0 {
		g.dirty = append(g.dirty, id)
	}
	st.pending += grant
	return true
}

// grantNow writes stream id's pending credit from the calling goroutine
// if the connection is free, saving the flusher a wake-up; else the flusher
// writes it.
func (g *guard) grantNow(id uint32) {
	select {
	case g.wsem <- struct{}{}:
	default:
		g.wake()
		return
	}
	defer g.unlockWrite()
	g.mu.Lock()
	st := g.streams[id]
	if st == nil || st.pending == 0 || !st.closedAt.IsZero() {
		g.mu.Unlock()
		return
	}
	h := makeHeader(typeWindowUpdate, 0, id, st.pending)
	st.given += uint64(st.pending)
	st.pending = 0
	g.mu.Unlock()
	if _, err := g.Conn.Write(h[:]); err != nil {
		g.Conn.Close() // half a record may be out: the session cannot go on
	}
}

// wakeReader makes a reader waiting on stream id look again (its deadline
// changed).
func (g *guard) wakeReader(id uint32) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if st := g.streams[id]; st != nil {
		poke(st.rwake)
	}
}

// tuneLocked sizes st's window from the bandwidth-delay product its reader
// shows: what it took in the last epoch, scaled to one round trip. A
// window-limited stream takes about half its window a round trip (credit
// goes back a quarter window at a time, and takes a round trip to become
// data), so the window aims at four times that product, growing at most
// fourfold an epoch (eightfold the first) and never shrinking, much as Linux sizes a TCP receive
// buffer (tcp_rcv_space_adjust). Over a long path a stream so grows every
// round trip until it fills the path, and once one stream of a session has,
// the session's next streams start from there at their first epoch. On
// loopback and LANs the product stays near the initial 256 KiB, and a
// stream whose reader is slow never grows. An epoch is a round trip, or
// tuneEpoch if that is longer, so that a burst of reading after a pause
// does not read as a fast path; the first begins with the stream's first
// data. Growth is promised by the budget.
func (g *guard) tuneLocked(st *gstream) {
	if g.rtt == 0 || st.window >= g.opt.MaxWindow {
		return
	}
	now := time.Now()
	if st.epochAt.IsZero() {
		st.epochAt, st.epochFrom = now, st.consumed
		return
	}
	rtt := max(g.rtt, rttFloor)
	elapsed := now.Sub(st.epochAt)
	if elapsed < max(rtt, tuneEpoch) {
		return
	}
	bdp := float64(st.consumed-st.epochFrom) * float64(rtt) / float64(elapsed)
	if want := uint64(4 * bdp); want > uint64(st.window) {
		if st.tuned {
			want = min(want, 4*uint64(st.window))
		} else {
			// The first epoch began with the first data, from a window
			// far too small for a long path: let it jump, or take the path
			// another stream of the session measured.
			want = max(min(want, 8*uint64(st.window)), uint64(g.learned))
		}
		more := uint32(min(want, uint64(g.opt.MaxWindow))) - st.window
		if g.budget.grow(int64(more)) {
			st.window += more
			st.grown += int64(more)
			g.learned = max(g.learned, st.window)
		}
	}
	st.tuned = true
	st.epochAt, st.epochFrom = now, st.consumed
}
