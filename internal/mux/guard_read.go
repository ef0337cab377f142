package mux

import (
	"errors"
	"io"
	"net"
	"time"
)

// Read hands yamux what the peer sent, frame by frame: a header only once it
// is whole and checked, a dropped frame not at all, and the RSTs the guard
// injects for yamux at frame boundaries. Only yamux's receive goroutine
// calls it.
func (g *guard) Read(p []byte) (int, error) {
	if g.rerr != nil {
		return 0, g.rerr
	}
	for {
		switch {
		case len(g.rout) > 0:
			n := copy(p, g.rout)
			g.rout = g.rout[n:]
			return n, nil
		case g.rdata > 0:
			if err := g.readBody(); err != nil {
				return 0, err
			}
			continue
		case g.rskip > 0:
			if g.scratch == nil {
				g.scratch = make([]byte, 16<<10)
			}
			n, err := g.Conn.Read(g.scratch[:min(int64(len(g.scratch)), g.rskip)])
			g.rskip -= int64(n)
			if err != nil && !g.interrupted(err) {
				return 0, err
			}
			if g.rskip == 0 {
				g.scratch = nil
			}
			continue
		}
		if g.injected() {
			continue
		}
		if err := g.readHeader(); err != nil {
			if errors.Is(err, errInjected) {
				continue
			}
			return 0, err
		}
		if err := g.inbound(g.rhdr); err != nil {
			g.rerr = err
		} else {
			g.report()
		}
		if g.rerr != nil {
			if v, ok := errors.AsType[*ViolationError](g.rerr); ok {
				g.ended.Store(v)
			}
			g.goAway()
			return 0, g.rerr
		}
	}
}

// errInjected stops a header wait: an injected frame goes first.
var errInjected = errors.New("mux: injected frame pending")

// injected moves the next RST meant for yamux to rout, if there is one.
func (g *guard) injected() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.toYamux) == 0 {
		return false
	}
	g.rbuf = g.toYamux[0]
	g.toYamux = g.toYamux[1:]
	if len(g.toYamux) == 0 {
		g.toYamux = nil
	}
	g.rout = g.rbuf[:]
	return true
}

// readHeader reads the next frame header from the peer into rhdr. While it
// waits for the header's first byte, an injection may cut the wait short
// (errInjected).
func (g *guard) readHeader() error {
	for g.rhdrN < headerSize {
		if g.rhdrN == 0 {
			g.waiting.Store(true)
			g.mu.Lock()
			pending := len(g.toYamux) > 0
			g.mu.Unlock()
			if pending {
				g.waiting.Store(false)
				return errInjected
			}
		}
		n, err := g.Conn.Read(g.rhdr[g.rhdrN:])
		g.waiting.Store(false)
		g.rhdrN += n
		if err != nil {
			if g.interrupted(err) {
				continue
			}
			if g.rhdrN > 0 && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	g.rhdrN = 0
	return nil
}

// interrupted reports whether err is the timeout that interrupt caused, and
// if so clears the deadline so that reading goes on.
func (g *guard) interrupted(err error) bool {
	ne, ok := errors.AsType[net.Error](err)
	if !ok || !ne.Timeout() {
		return false
	}
	g.mu.Lock()
	mine := g.interrupting
	g.mu.Unlock()
	if !mine {
		return false
	}
	// Clear the deadline before the flag: an injection in between sees the
	// flag still set and relies on Read's look at toYamux, which follows.
	_ = g.Conn.SetReadDeadline(time.Time{})
	g.mu.Lock()
	g.interrupting = false
	g.mu.Unlock()
	return true
}

// interruptLocked cuts Read's wait for a header short, so that an injected
// frame reaches yamux now rather than with the peer's next frame. g.mu is
// held. A read deadline in the past makes the blocked Read return a
// timeout, which crypto/tls treats as temporary.
func (g *guard) interruptLocked() {
	if g.interrupting || !g.waiting.Load() {
		return
	}
	g.interrupting = true
	_ = g.Conn.SetReadDeadline(longAgo)
}

var longAgo = time.Unix(1, 0)

// pass hands yamux the header h of a frame without a body.
func (g *guard) pass(h header) {
	g.rbuf = h
	g.rout = g.rbuf[:]
}

// deliver takes the body of data frame h into st's receive buffer (readBody)
// and then hands yamux the frame's flags alone, as an empty data frame:
// yamux keeps each stream's state (open, FIN, RST) but never holds its data.
// g.mu is held.
func (g *guard) deliver(st *gstream, h header) {
	g.rst, g.rid, g.rdata, g.rfin = st, h.streamID(), int(h.length()), h.has(flagFIN)
	g.rpend = h.flags() != 0
	if g.rpend {
		g.rbuf = makeHeader(typeData, h.flags(), h.streamID(), 0)
	}
}

// readBody reads the rest of the current data frame's body from the
// connection into its stream's buffer, as the TLS records come, and wakes
// the stream's reader once the body is in or wakeBatch is buffered. Once the
// body is in, the frame's FIN reaches the reader and its flags reach yamux.
func (g *guard) readBody() error {
	g.mu.Lock()
	st := g.rst
	buf := st.rq.fill(g.rdata)
	g.mu.Unlock()
	n, err := g.Conn.Read(buf)
	g.mu.Lock()
	st.rq.commit(n)
	g.rdata -= n
	if g.rdata == 0 {
		st.rfin = st.rfin || g.rfin
		g.rst = nil
		if g.rpend {
			g.rpend = false
			g.rout = g.rbuf[:]
		}
	}
	// The reader is woken when the frame is in, or once a batch worth a
	// write to the backend is: not for every TLS record of a large frame;
	// not at all if the stream's sink took everything.
	grant := false
	if g.rdata == 0 || st.rq.n >= wakeBatch {
		grant = g.sinkLocked(g.rid, st)
		if st.rq.n > 0 || st.rfin || st.sink == nil {
			poke(st.rwake)
		}
	}
	g.mu.Unlock()
	if grant {
		g.wake() // the flusher writes the window update: this goroutine must not block on a write
	}
	if err != nil && !(n == 0 && g.interrupted(err)) && (n == 0 || g.rdata > 0) {
		return err
	}
	return nil
}

// sinkLocked gives st's buffered bytes to its sink, if it has one and no
// Read or Lend holds them, one chunk at a time until the sink takes less
// than it is given: a copy loop parked in Lend is then not woken for bytes
// the sink wrote on from this goroutine. g.mu is held, and released while
// the sink runs. It reports whether credit is due to the peer.
func (g *guard) sinkLocked(id uint32, st *gstream) (grant bool) {
	for st.sink != nil && !st.sinking && !st.rq.lent && st.rq.n > 0 && st.closedAt.IsZero() {
		b, fn := st.rq.lend(sinkMax), st.sink
		st.sinking = true
		g.mu.Unlock()
		n := fn(b)
		g.mu.Lock()
		st.sinking = false
		if g.streams[id] != st || !st.closedAt.IsZero() {
			return grant // gone meanwhile: drop kept what was lent
		}
		st.rq.giveBack(n)
		if n > 0 {
			grant = g.consumedLocked(id, st, n) || grant
		}
		if n < len(b) {
			break // the destination is full: the copy loop writes the rest, waiting
		}
	}
	return grant
}

// sinkMax bounds one sink call, as the copy loop bounds one write.
const sinkMax = 128 << 10

// drop discards the frame h: its body, if any, is read and thrown away.
func (g *guard) drop(h header) {
	if h.typ() == typeData {
		g.rskip = int64(h.length())
	}
}

// inbound checks a header from the peer and decides what becomes of the
// frame: passed to yamux, dropped, or the end of the session (an error).
func (g *guard) inbound(h header) error {
	if h.version() != protoVersion {
		return violation(ViolationBadVersion, "version %d", h.version())
	}
	switch h.typ() {
	case typeData, typeWindowUpdate:
		return g.inboundStream(h)
	case typePing:
		return g.inboundPing(h)
	case typeGoAway:
		g.pass(h)
		return nil
	}
	return violation(ViolationBadType, "frame type %d", h.typ())
}

func (g *guard) inboundStream(h header) error {
	id, fl, n := h.streamID(), h.flags(), h.length()
	if fl&^knownFlags != 0 {
		return violation(ViolationBadFlags, "%v", &h)
	}
	if id == 0 {
		return violation(ViolationStreamZero, "%v", &h)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if fl&flagSYN != 0 {
		if !g.peerOpens(id) {
			return violation(ViolationStreamParity, "the peer opened stream %d, which is ours to number", id)
		}
		// yamux numbers a stream before it sends its SYN, so concurrent
		// opens may arrive out of order: only a stream that is open may not
		// be opened again (yamux would end the session for it too).
		if g.streams[id] != nil {
			return violation(ViolationDuplicate, "stream %d opened while it is open", id)
		}
		g.peerHigh = max(g.peerHigh, id)
		if reason := g.admitLocked(); reason != "" {
			g.refuseLocked(id, reason)
			g.drop(h)
			return nil
		}
		g.streams[id] = newGStream(false)
		g.peerLive++
	}
	st := g.streams[id]
	if st == nil {
		if g.peerOpens(id) && id > g.peerHigh || !g.peerOpens(id) && id > g.ourHigh {
			return violation(ViolationUnknownStream, "%v: no such stream was opened", &h)
		}
		g.drop(h) // a stream that ended or was refused: its late frames go nowhere
		return nil
	}
	if !st.closedAt.IsZero() {
		return g.lateLocked(id, st, h)
	}
	if st.finIn && st.finOut && fl&(flagFIN|flagRST) == 0 && (h.typ() != typeData || n == 0) {
		g.drop(h) // yamux has let go of the stream: nothing for it
		return nil
	}
	if h.typ() == typeData {
		if n > 0 && st.finIn {
			return violation(ViolationDataAfterFIN, "%d bytes on stream %d after its FIN", n, id)
		}
		if uint64(n) > st.given-st.received {
			return violation(ViolationWindowExceeded, "%d bytes on stream %d with a window of %d", n, id, st.given-st.received)
		}
		if n > 0 && !g.budget.Take(int64(n)) {
			g.resetLocked(id, st, ReasonBudget)
			g.drop(h)
			return nil
		}
		st.received += uint64(n)
	} else {
		st.sendCredit += uint64(n)
		if st.sendCredit > 1<<32-1 {
			return violation(ViolationWindowOverflow, "stream %d granted %d bytes of window", id, st.sendCredit)
		}
		if n > 0 {
			poke(st.wake)
		}
	}
	if fl&flagFIN != 0 {
		if st.finIn {
			return violation(ViolationDuplicateFIN, "stream %d", id)
		}
		st.finIn = true
	}
	if fl&flagRST != 0 {
		g.removeLocked(id, st) // and yamux drops the stream
		g.pass(h)
		return nil
	}
	if h.typ() == typeData && n > 0 {
		g.deliver(st, h)
		return nil
	}
	if fl&flagFIN != 0 {
		st.rfin = true
		poke(st.rwake)
	}
	if fl != 0 || h.typ() == typeWindowUpdate {
		g.pass(h)
	}
	return nil
}

// lateLocked handles a frame for a stream that the application closed
// while the peer had not: its data is dropped, and once the peer has used
// up its window on it (it could only stall from then on) or at its FIN, the
// stream is gone; in the first case the peer is told with a RST, as a TCP
// peer writing into a closed socket is. g.mu is held.
func (g *guard) lateLocked(id uint32, st *gstream, h header) error {
	n := h.length()
	g.drop(h)
	if h.typ() == typeData {
		if uint64(n) > st.given-st.received {
			return violation(ViolationWindowExceeded, "%d bytes on stream %d with a window of %d", n, id, st.given-st.received)
		}
		st.received += uint64(n)
		if st.received == st.given && h.flags()&(flagFIN|flagRST) == 0 {
			g.sendRSTLocked(id)
			g.removeLocked(id, st)
			return nil
		}
	}
	if h.flags()&(flagFIN|flagRST) != 0 {
		g.removeLocked(id, st)
	}
	return nil
}

// admitLocked decides whether the peer may open one more stream: "" if
// so, else the reason. g.mu is held.
func (g *guard) admitLocked() string {
	switch {
	case g.peerLive >= g.opt.MaxStreams:
		return ReasonStreamCap
	case g.budget.nearFull():
		g.budget.denied.Add(1)
		return ReasonBudget
	case g.opens != nil && !g.opens.Allow():
		return ReasonStreamRate
	}
	return ""
}

// refuseLocked answers a stream the peer opened and the guard did not admit.
// With Options.Refusal the answer is that data and a FIN, in one frame that
// also acknowledges the stream; without, a RST. yamux never hears of the
// stream. g.mu is held.
func (g *guard) refuseLocked(id uint32, reason string) {
	if len(g.opt.Refusal) == 0 {
		g.sendRSTLocked(id)
	} else {
		h := makeHeader(typeData, flagACK|flagFIN, id, uint32(len(g.opt.Refusal)))
		g.ctl = append(append(g.ctl, h[:]...), g.opt.Refusal...)
	}
	g.events = append(g.events, LimitEvent{Reason: reason, StreamID: id})
}

// resetLocked resets a stream on the guard's own decision: a RST to the
// peer, one to yamux, and the stream is gone. g.mu is held.
func (g *guard) resetLocked(id uint32, st *gstream, reason string) {
	g.sendRSTLocked(id)
	g.toYamux = append(g.toYamux, makeHeader(typeWindowUpdate, flagRST, id, 0))
	g.removeLocked(id, st)
	g.events = append(g.events, LimitEvent{Reason: reason, StreamID: id, Reset: true})
}

func (g *guard) sendRSTLocked(id uint32) {
	h := makeHeader(typeWindowUpdate, flagRST, id, 0)
	g.ctl = append(g.ctl, h[:]...)
}

// removeLocked forgets a stream and gives back what it held of the budget.
// g.mu is held.
func (g *guard) removeLocked(id uint32, st *gstream) {
	delete(g.streams, id)
	st.rq.drop()
	poke(st.wake) // a writer waiting for credit finds the stream gone
	poke(st.rwake)
	if !st.ours {
		g.peerLive--
	}
	if !st.closedAt.IsZero() {
		g.lingering--
	} else {
		g.budget.Free(int64(st.received - st.consumed))
	}
	if st.grown > 0 {
		g.budget.shrink(st.grown)
	}
}

// inboundPing answers the peer's ping itself (yamux would start a goroutine
// per ping) and measures the round trip of ours.
func (g *guard) inboundPing(h header) error {
	fl, opaque := h.flags(), h.length()
	g.mu.Lock()
	defer g.mu.Unlock()
	if fl&flagSYN != 0 {
		if !g.pings.Allow() {
			return violation(ViolationPingFlood, "more than %d pings a second", pingRate)
		}
		if g.pongs >= maxUnansweredPings {
			return violation(ViolationPingFlood, "%d pings unanswered: the peer does not read our answers", g.pongs)
		}
		pong := makeHeader(typePing, flagACK, 0, opaque)
		g.ctl = append(g.ctl, pong[:]...)
		g.pongs++
		return nil
	}
	if sent, ok := g.pingSent[opaque]; ok {
		delete(g.pingSent, opaque)
		g.sampleRTTLocked(time.Since(sent))
		if opaque >= guardPingID {
			return nil // ours, not yamux's
		}
	}
	if !g.pings.Allow() {
		return violation(ViolationPingFlood, "more than %d ping frames a second", pingRate)
	}
	g.pass(h)
	return nil
}

func (g *guard) sampleRTTLocked(d time.Duration) {
	g.rtts[g.rttNext%rttSamples] = d
	g.rttNext++
	g.rtt = d
	for _, r := range g.rtts[:min(g.rttNext, rttSamples)] {
		g.rtt = min(g.rtt, r)
	}
}

// report hands the limit events of the last frame to Options.OnLimit,
// outside the lock, and wakes the flusher for what they queued.
func (g *guard) report() {
	g.mu.Lock()
	ev := g.events
	g.events = nil
	queued := len(g.ctl) > 0
	backlog := len(g.ctl) > maxControlBacklog
	g.mu.Unlock()
	if queued {
		g.wake()
	}
	if g.opt.OnLimit != nil {
		for _, e := range ev {
			g.opt.OnLimit(e)
		}
	}
	if backlog && g.rerr == nil {
		g.rerr = violation(ViolationControlBacklog, "more than %d bytes of answers unwritten: the peer does not read", maxControlBacklog)
	}
}

// goAway tells the peer, if it can be done at once, that its session ends
// for a protocol error.
func (g *guard) goAway() {
	select {
	case g.wsem <- struct{}{}:
	default:
		return
	}
	defer g.unlockWrite()
	h := makeHeader(typeGoAway, 0, 0, goAwayProtoErr)
	_ = g.Conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = g.Conn.Write(h[:])
}

// wakeBatch is how much received data wakes a stream's reader before the
// frame it belongs to is complete.
const wakeBatch = 64 << 10
