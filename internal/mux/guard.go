package mux

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// The guard's bounds on what a well-behaved yamux peer never exceeds.
const (
	// maxUnansweredPings is how many of the peer's pings may wait for their
	// answer at once. yamux's keepalive has one in flight; a peer with more
	// is writing pings without reading our answers.
	maxUnansweredPings = 64
	// pingRate and pingBurst bound pings from the peer, answered or not:
	// a keepalive sends one per interval.
	pingRate  = 50
	pingBurst = 100
	// maxControlBacklog bounds the control frames (answers to pings,
	// refusals, resets) waiting to be written: a peer that keeps causing
	// them without reading what we write has its session ended.
	maxControlBacklog = 64 << 10
	// linger is how long a stream the application closed waits for the
	// peer's FIN before it is reset, as TCP's FIN_WAIT_2 timeout does.
	linger = 10 * time.Second
	// rttFloor floors the round-trip time that window tuning works with:
	// below it, on loopback and most LANs, scheduling noise is what the
	// measurement shows, and 256 KiB of window already covers far more
	// than the bandwidth-delay product.
	rttFloor = 100 * time.Microsecond
	// tuneEpoch is the shortest time over which window tuning measures
	// what a stream's reader takes.
	tuneEpoch = 2 * time.Millisecond
	// rttSamples is how many recent round-trip samples the minimum is
	// taken over: the minimum, not an average, because a ping queued behind
	// a window of data measures the queue, not the path.
	rttSamples = 6
	// guardPingID is the opaque value of the guard's first ping, the
	// others' are the next ones: they measure the round trip at the start of
	// a session (window tuning needs it at once; the keepalives come every
	// 10 s or more). yamux numbers its pings from 0.
	guardPingID = 0xfffffff0
)

// probeAt are when the guard pings, from the session's start: three
// samples, so that one taken while the machine is busy does not stand alone.
var probeAt = []time.Duration{0, 100 * time.Millisecond, time.Second}

// ViolationError ends a session whose peer broke the yamux protocol or one
// of the guard's bounds. AcceptStream and Open return it (wrapped) once the
// session has ended because of it.
type ViolationError struct {
	Kind   string // stable snake_case name: "ping_flood", "window_exceeded", ...
	Detail string
}

func (e *ViolationError) Error() string {
	return "mux: protocol violation: " + e.Kind + ": " + e.Detail
}

// Violation kinds, as ViolationError.Kind reports them.
const (
	ViolationBadVersion     = "bad_version"
	ViolationBadType        = "bad_type"
	ViolationBadFlags       = "bad_flags"
	ViolationStreamZero     = "stream_zero"
	ViolationStreamParity   = "stream_parity"
	ViolationDuplicate      = "duplicate_stream"
	ViolationUnknownStream  = "unknown_stream"
	ViolationWindowExceeded = "window_exceeded"
	ViolationWindowOverflow = "window_overflow"
	ViolationDataAfterFIN   = "data_after_fin"
	ViolationDuplicateFIN   = "duplicate_fin"
	ViolationPingFlood      = "ping_flood"
	ViolationControlBacklog = "control_backlog"
)

// ViolationKinds lists every ViolationError.Kind, for metrics that show
// each at zero from the start.
var ViolationKinds = []string{
	ViolationBadVersion, ViolationBadType, ViolationBadFlags, ViolationStreamZero,
	ViolationStreamParity, ViolationDuplicate, ViolationUnknownStream,
	ViolationWindowExceeded, ViolationWindowOverflow, ViolationDataAfterFIN,
	ViolationDuplicateFIN, ViolationPingFlood, ViolationControlBacklog,
}

// Reasons a LimitEvent gives.
const (
	ReasonStreamCap  = "streams_per_session"
	ReasonStreamRate = "stream_rate"
	ReasonBudget     = "memory_budget"
)

// LimitEvent reports a stream the guard refused or reset on its own, for a
// limit: the streams cap, the open rate or the memory budget.
type LimitEvent struct {
	Reason   string // one of the Reason constants
	StreamID uint32
	Reset    bool // an open stream was reset (the budget ran out); else a new one was refused
}

// gstream is what the guard knows of one stream. Receive credit is counted
// in totals since the stream began: the peer may send given-received more
// bytes, the application holds received-consumed unread.
type gstream struct {
	ours          bool // opened by our side
	finIn, finOut bool
	closedAt      time.Time // the application closed it and we wait for the peer's FIN; zero otherwise

	given    uint64 // credit granted to the peer, the initial window included
	received uint64
	consumed uint64
	window   uint32 // given never passes consumed+window
	grown    int64  // window promised by the budget beyond initialWindow
	pending  uint32 // credit granted whose window update is not written yet

	epochAt   time.Time // window tuning: when the current epoch began; zero before the first data
	epochFrom uint64    // and consumed then
	tuned     bool      // an epoch has ended

	sendCredit uint64        // credit the peer granted us, minus what we sent
	ackOut     bool          // our ACK of the peer's open went out
	wake       chan struct{} // a writer waiting for credit looks again

	rq    recvBuf       // received and not read
	rfin  bool          // the peer's FIN, once the data before it is in rq
	rwake chan struct{} // a reader waiting for data looks again
}

// guard is the frame guard: the connection a yamux session reads and writes,
// over the TLS connection. It reads every frame header as it passes (never a
// payload), enforces what a well-behaved peer never exceeds, admits or
// refuses the streams the peer opens, grants receive credit by its own
// policy within the memory budget, answers pings itself (yamux would start a
// goroutine for each), and gathers a frame into one write. See Session.
type guard struct {
	net.Conn            // the connection under the session; addresses, deadlines
	t        *Transport // under Conn, or nil: batches a frame's TLS records
	opt      *Options
	budget   *Budget
	server   bool // our role: the peer opens odd stream IDs when we are the server

	// Read side: only yamux's receive goroutine calls Read.
	rhdr    header                         // the header being read from the peer
	rhdrN   int                            // bytes of rhdr read so far
	rbuf    header                         // the header being handed to yamux
	rout    []byte                         // rbuf's bytes that yamux has not read yet
	rst     *gstream                       // the stream whose data frame body is being read
	rdata   int                            // body bytes of that frame still to read into rst.rq
	rfin    bool                           // that frame carries FIN
	rpend   bool                           // rbuf holds its flags, for yamux once the body is in
	rskip   int64                          // body bytes of a dropped frame still to discard
	rerr    error                          // the violation that ended the session; sticky
	ended   atomic.Pointer[ViolationError] // rerr, for other goroutines
	scratch []byte                         // where dropped bodies are read to

	waiting atomic.Bool // Read waits for the first byte of a header

	// Write side. The token in wsem is the right to write to Conn, so that
	// frames never interleave: yamux's send goroutine (header-only frames:
	// window updates, pings, FIN, GoAway), the flusher (the guard's control
	// frames) and stream writers (data, written by writeData) take turns.
	wsem chan struct{}
	wbuf []byte // a data frame's header and first chunk; used with the token

	mu           sync.Mutex
	streams      map[uint32]*gstream // guarded by mu
	peerHigh     uint32              // highest stream ID the peer opened; guarded by mu
	ourHigh      uint32              // guarded by mu
	peerLive     int                 // streams the peer opened and that still exist; guarded by mu
	toYamux      []header            // RSTs for yamux at the next frame boundary; guarded by mu
	interrupting bool                // Read's wait is being cut short; guarded by mu
	ctl          []byte              // control frames for the flusher; guarded by mu
	pongs        int                 // answers to pings queued, not yet written; guarded by mu
	dirty        []uint32            // streams with pending credit; guarded by mu
	lingering    int                 // streams with closedAt set; guarded by mu
	events       []LimitEvent        // to report once mu is released; guarded by mu
	opens        *rate.Limiter       // stream opens by the peer; nil: no rate limit
	pings        *rate.Limiter
	pingSent     map[uint32]time.Time      // our pings in flight; guarded by mu
	rtts         [rttSamples]time.Duration // recent round trips, newest at rttNext-1; guarded by mu
	rttNext      int                       // guarded by mu
	rtt          time.Duration             // the least of rtts; 0 until measured; guarded by mu
	learned      uint32                    // the largest window tuning gave a stream of the session; guarded by mu

	started     bool          // start ran; set before any concurrent use
	linger      time.Duration // see the constant; tests shorten it
	kick        chan struct{} // wakes the flusher
	done        chan struct{} // closed by Close
	flusherDone chan struct{}
	closeOnce   sync.Once
}

func newGuard(conn net.Conn, opt *Options, server bool) *guard {
	g := &guard{
		Conn: conn, t: transportOf(conn), opt: opt, budget: opt.Budget, server: server,
		streams:     make(map[uint32]*gstream),
		pingSent:    make(map[uint32]time.Time),
		pings:       rate.NewLimiter(pingRate, pingBurst),
		kick:        make(chan struct{}, 1),
		wsem:        make(chan struct{}, 1),
		done:        make(chan struct{}),
		flusherDone: make(chan struct{}),
		linger:      linger,
	}
	if opt.StreamRate > 0 {
		g.opens = rate.NewLimiter(rate.Limit(opt.StreamRate), max(opt.MaxStreams, 1))
	}
	return g
}

// start starts the flusher and sends the guard's ping, which measures the
// round trip at once: window tuning needs it. Close stops the flusher.
func (g *guard) start() {
	g.probe(0)
	g.started = true
	go g.flusher()
	g.wake()
}

// probe queues the guard's ping number i.
func (g *guard) probe(i int) {
	id := guardPingID + uint32(i)
	ping := makeHeader(typePing, flagSYN, 0, id)
	g.mu.Lock()
	g.ctl = append(g.ctl, ping[:]...)
	g.pingSent[id] = time.Now()
	g.mu.Unlock()
}

// peerOpens reports whether id is of the parity the peer opens: odd from a
// client (yamux numbers a client's streams 1, 3, ...), even from a server.
func (g *guard) peerOpens(id uint32) bool { return (id%2 == 1) == g.server }

func violation(kind, format string, args ...any) *ViolationError {
	return &ViolationError{Kind: kind, Detail: fmt.Sprintf(format, args...)}
}

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
	g.rst, g.rdata, g.rfin = st, int(h.length()), h.has(flagFIN)
	g.rpend = h.flags() != 0
	if g.rpend {
		g.rbuf = makeHeader(typeData, h.flags(), h.streamID(), 0)
	}
}

// readBody reads the rest of the current data frame's body from the
// connection into its stream's buffer, as the TLS records come, and wakes
// the stream's reader for each part. Once the body is in, the frame's FIN
// reaches the reader and its flags reach yamux.
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
	// write to the backend is: not for every TLS record of a large frame.
	if g.rdata == 0 || st.rq.n >= wakeBatch {
		poke(st.rwake)
	}
	g.mu.Unlock()
	if err != nil && !(n == 0 && g.interrupted(err)) && (n == 0 || g.rdata > 0) {
		return err
	}
	return nil
}

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

func newGStream(ours bool) *gstream {
	return &gstream{
		ours: ours, given: initialWindow, window: initialWindow,
		sendCredit: initialWindow, wake: make(chan struct{}, 1), rwake: make(chan struct{}, 1),
	}
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

// wakeBatch is how much received data wakes a stream's reader before the
// frame it belongs to is complete.
const wakeBatch = 64 << 10

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
	case st.rq.n > 0:
		return st, nil, nil
	case st.rfin:
		return nil, nil, io.EOF
	}
	return nil, st.rwake, nil
}

// consumedLocked records that the application took n bytes of st, tunes
// its window, and reports whether credit is due to the peer (a quarter
// window: half a window, yamux's own rule, leaves a window-limited stream
// idle for half of each round trip). g.mu is held.
func (g *guard) consumedLocked(id uint32, st *gstream, n int) bool {
	st.consumed += uint64(n)
	g.budget.Free(int64(n))
	g.tuneLocked(st)
	grant := g.allowanceLocked(st, uint64(st.window/4))
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

// release is the guard's part of the application closing stream id: with
// rst, the peer gets a RST and the stream is gone; without, the FIN yamux
// sent stands and the stream lingers until the peer's FIN (what the peer
// sends meanwhile is dropped). Either way yamux is given a RST, so that it
// drops the stream and its buffers at once.
func (g *guard) release(id uint32, rst bool) {
	g.mu.Lock()
	st := g.streams[id]
	if st == nil {
		g.mu.Unlock()
		return
	}
	if !st.closedAt.IsZero() {
		if rst {
			g.sendRSTLocked(id)
			g.removeLocked(id, st)
		}
		g.mu.Unlock()
		g.wake()
		return
	}
	gone := st.finIn && st.finOut // yamux let go of it already
	if !gone {
		g.toYamux = append(g.toYamux, makeHeader(typeWindowUpdate, flagRST, id, 0))
		g.interruptLocked()
	}
	switch {
	case rst && !gone:
		g.sendRSTLocked(id)
		g.removeLocked(id, st)
	case st.finIn || gone:
		g.removeLocked(id, st)
	default:
		g.budget.Free(int64(st.received - st.consumed))
		st.consumed = st.received
		st.rq.drop()
		st.closedAt = time.Now()
		g.lingering++
	}
	g.mu.Unlock()
	g.wake()
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

// Close closes the connection and stops the flusher. yamux calls it when
// the session ends.
func (g *guard) Close() error {
	err := g.Conn.Close()
	g.closeOnce.Do(func() {
		close(g.done)
		if g.started {
			<-g.flusherDone
		}
		g.mu.Lock()
		for id, st := range g.streams {
			g.removeLocked(id, st)
		}
		g.mu.Unlock()
	})
	return err
}

// NetConn returns the connection under the guard.
func (g *guard) NetConn() net.Conn { return g.Conn }

// closed reports whether the guard was closed: the session has ended.
func (g *guard) closed() bool {
	select {
	case <-g.done:
		return true
	default:
		return false
	}
}
