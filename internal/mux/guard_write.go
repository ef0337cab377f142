package mux

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// Write takes yamux's frames. yamux writes only header-only frames through
// the guard (window updates, pings, FIN, RST, GoAway): stream data goes out
// through writeData, never through yamux's send goroutine. A window update
// carries the credit the guard grants, not yamux's; a frame for a stream the
// guard already let go of is dropped.
func (g *guard) Write(p []byte) (int, error) {
	if len(p) != headerSize {
		return 0, fmt.Errorf("mux: a %d-byte write where a frame header was due", len(p))
	}
	h := header(p)
	if h.typ() == typeData && h.length() > 0 {
		return 0, errors.New("mux: yamux wrote stream data, which only the guard writes")
	}
	keep, out := g.outbound(h)
	if !keep {
		return len(p), nil
	}
	if err := g.lockWrite(time.Time{}); err != nil {
		return 0, err
	}
	defer g.unlockWrite()
	if _, err := g.Conn.Write(out[:]); err != nil {
		return 0, err
	}
	return len(p), nil
}

// lockWrite takes the right to write to the connection, waiting until
// deadline (zero: no deadline) or the end of the session.
func (g *guard) lockWrite(deadline time.Time) error {
	select {
	case g.wsem <- struct{}{}:
		return nil
	default:
	}
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case g.wsem <- struct{}{}:
		return nil
	case <-g.done:
		return errSessionEnded
	case <-timeout:
		return os.ErrDeadlineExceeded
	}
}

func (g *guard) unlockWrite() { <-g.wsem }

// errSessionEnded is what a wait on a session that ended returns; Stream
// reports it as ErrReset.
var errSessionEnded = errors.New("mux: the session ended")

// errStreamGone is what writeData returns once the stream is reset or let
// go of; Stream reports it as ErrReset or net.ErrClosed.
var errStreamGone = errors.New("mux: the stream is gone")

// errWriteClosed is a write after CloseWrite.
var errWriteClosed = fmt.Errorf("mux: write after CloseWrite: %w", net.ErrClosed)

// firstChunk is how much of a body goes out in the same Write as its header:
// the largest TLS record payload, so header and body start share one record
// and the rest of the body still goes to the TLS layer without a copy.
const firstChunk = 16<<10 - headerSize

// maxDataFrame bounds one data frame's body, so that one stream's write
// does not hold the connection for long while others wait.
const maxDataFrame = 128 << 10

// writeData writes b on stream id as data frames, within the credit the
// peer granted, straight to the connection from the calling goroutine: no
// copy into yamux's send buffer and no hand-off to its send goroutine.
// deadline is the stream's write deadline (zero: none). It returns the bytes
// written; the caller (Stream.Write) serializes its stream's writes.
func (g *guard) writeData(id uint32, b []byte, deadline func() time.Time) (int, error) {
	total := 0
	for len(b) > 0 {
		n, flags, wake, err := g.reserve(id, len(b))
		if err != nil {
			return total, err
		}
		if n == 0 {
			if err := g.waitCredit(wake, deadline()); err != nil {
				return total, err
			}
			continue
		}
		if err := g.lockWrite(deadline()); err != nil {
			g.unreserve(id, n)
			return total, err
		}
		err = g.writeFrame(makeHeader(typeData, flags, id, uint32(n)), b[:n])
		g.unlockWrite()
		if err != nil {
			// A frame may be half written: the session cannot go on.
			g.Conn.Close()
			return total, err
		}
		total += n
		b = b[n:]
	}
	return total, nil
}

// reserve takes up to want bytes of the peer's credit for stream id (0 if
// it has none now, with the channel that says when to look again), and the
// flags the frame carries: the ACK of a stream the peer opened, if ours has
// not gone out yet.
func (g *guard) reserve(id uint32, want int) (n int, flags uint16, wake chan struct{}, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := g.streams[id]
	switch {
	case st == nil || !st.closedAt.IsZero():
		return 0, 0, nil, errStreamGone
	case st.finOut:
		return 0, 0, nil, errWriteClosed
	case st.sendCredit == 0:
		return 0, 0, st.wake, nil
	}
	n = int(min(uint64(want), st.sendCredit, maxDataFrame))
	st.sendCredit -= uint64(n)
	if !st.ours && !st.ackOut {
		flags, st.ackOut = flagACK, true
	}
	return n, flags, st.wake, nil
}

// unreserve gives back credit reserve took for a frame that was not sent.
func (g *guard) unreserve(id uint32, n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if st := g.streams[id]; st != nil {
		st.sendCredit += uint64(n)
	}
}

// waitCredit waits until wake says to look again, deadline passes or the
// session ends.
func (g *guard) waitCredit(wake chan struct{}, deadline time.Time) error {
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		d := time.Until(deadline)
		if d <= 0 {
			return os.ErrDeadlineExceeded
		}
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-wake:
		return nil
	case <-g.done:
		return errSessionEnded
	case <-timeout:
		return os.ErrDeadlineExceeded
	}
}

// poke tells whoever waits on c to look again, without blocking.
func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// wakeWriter makes a writer waiting on stream id look again (its deadline
// changed, or it was closed).
func (g *guard) wakeWriter(id uint32) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if st := g.streams[id]; st != nil {
		poke(st.wake)
	}
}

// writeFrame writes header h and body p; over a Transport, in one socket
// write. The caller holds the write token.
func (g *guard) writeFrame(h header, p []byte) error {
	k := min(len(p), firstChunk)
	g.wbuf = append(append(g.wbuf[:0], h[:]...), p[:k]...)
	if g.t != nil {
		g.t.begin()
	}
	_, err := g.Conn.Write(g.wbuf)
	if err == nil && k < len(p) {
		_, err = g.Conn.Write(p[k:])
	}
	if g.t != nil {
		if ferr := g.t.end(); err == nil {
			err = ferr
		}
	}
	return err
}

// outbound notes a frame header yamux writes and returns whether the frame
// goes out, and the header that does.
func (g *guard) outbound(h header) (keep bool, out header) {
	switch h.typ() {
	case typePing:
		if h.has(flagSYN) {
			g.mu.Lock()
			g.pingSent[h.length()] = time.Now()
			g.mu.Unlock()
		}
		return true, h
	case typeGoAway:
		return true, h
	}
	id, fl := h.streamID(), h.flags()
	g.mu.Lock()
	defer g.mu.Unlock()
	if fl&flagSYN != 0 && !g.peerOpens(id) {
		g.ourHigh = max(g.ourHigh, id)
		g.streams[id] = newGStream(true)
	}
	st := g.streams[id]
	if st == nil || !st.closedAt.IsZero() {
		// Gone, or closed by the application: yamux's late frames (a
		// window update from a last read, a FIN after the guard's RST)
		// have nothing to say.
		return false, h
	}
	if fl&flagACK != 0 && !st.ours {
		if st.ackOut { // a data frame of ours carried it already
			fl &^= flagACK
			h.setFlags(fl)
		}
		st.ackOut = true
	}
	if h.typ() == typeWindowUpdate {
		// yamux's own window update (the SYN or ACK of an open, a FIN):
		// yamux never holds the stream's data, so its idea of the window
		// means nothing; the update carries what the guard grants.
		grant := st.pending + g.allowanceLocked(st, 0)
		st.pending = 0
		st.given += uint64(grant)
		h.setLength(grant)
		if grant == 0 && fl == 0 {
			return false, h
		}
	} else if fl == 0 {
		return false, h // an empty data frame whose flags were ours already
	}
	if fl&flagFIN != 0 {
		st.finOut = true
	}
	if fl&flagRST != 0 {
		g.removeLocked(id, st)
	}
	return true, h
}

func (g *guard) wake() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// flusher writes the control frames the guard queues (answers to pings,
// refusals, resets, window updates) and resets streams that lingered too
// long. It is the only writer besides yamux's send goroutine, so the
// guard's reads never wait on a write.
func (g *guard) flusher() {
	defer close(g.flusherDone)
	// The sweep timer runs only while streams linger: an idle session costs
	// no wake-ups.
	sweep := time.NewTimer(time.Hour)
	sweep.Stop()
	defer sweep.Stop()
	armed := false
	began, probes := time.Now(), 1 // the first went out with start
	probe := time.NewTimer(probeAt[1])
	defer probe.Stop()
	var buf []byte
	for {
		g.mu.Lock()
		lingering := g.lingering > 0
		g.mu.Unlock()
		if lingering && !armed {
			sweep.Reset(time.Second)
			armed = true
		}
		select {
		case <-g.done:
			return
		case <-g.kick:
		case <-sweep.C:
			armed = false
			g.sweep()
		case <-probe.C:
			g.probe(probes)
			if probes++; probes < len(probeAt) {
				probe.Reset(probeAt[probes] - time.Since(began))
			}
		}
		g.mu.Lock()
		buf = append(buf[:0], g.ctl...)
		g.ctl = g.ctl[:0]
		pongs := g.pongs
		for _, id := range g.dirty {
			if st := g.streams[id]; st != nil && st.pending > 0 && st.closedAt.IsZero() {
				h := makeHeader(typeWindowUpdate, 0, id, st.pending)
				st.given += uint64(st.pending)
				st.pending = 0
				buf = append(buf, h[:]...)
			}
		}
		g.dirty = g.dirty[:0]
		g.mu.Unlock()
		if len(buf) == 0 {
			continue
		}
		err := g.lockWrite(time.Time{})
		if err == nil {
			_, err = g.Conn.Write(buf)
			g.unlockWrite()
		}
		g.mu.Lock()
		g.pongs -= pongs
		g.mu.Unlock()
		if err != nil {
			return // the session is ending; yamux finds out on its own
		}
	}
}

// sweep resets the streams that the application closed more than linger
// ago and whose peer has not finished them.
func (g *guard) sweep() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.lingering == 0 {
		return
	}
	cutoff := time.Now().Add(-g.linger)
	for id, st := range g.streams {
		if !st.closedAt.IsZero() && st.closedAt.Before(cutoff) {
			g.sendRSTLocked(id)
			g.removeLocked(id, st)
		}
	}
}
