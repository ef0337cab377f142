package mux

import (
	"fmt"
	"net"
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

	// sink, if set (Stream.SetSink), takes received bytes on the guard's
	// reader while no Read or Lend holds them; sinking while it runs,
	// outside g.mu, with bytes of rq lent to it.
	sink    func([]byte) int
	sinking bool
}

// guard is the frame guard: the connection a yamux session reads and writes,
// over the TLS connection. It reads every frame header as it passes and
// enforces what a well-behaved peer never exceeds, admits or refuses the
// streams the peer opens, answers pings itself (yamux would start a
// goroutine for each), and carries the streams' data: it reads data frames'
// bodies into each stream's own buffer (guard_read.go) and writes streams'
// data frames itself (guard_write.go), granting receive credit by its own
// policy within the memory budget (window.go); yamux sees the frames' flags
// and keeps the streams' and the session's state. See Session.
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
	rid     uint32                         // its id
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

func newGStream(ours bool) *gstream {
	return &gstream{
		ours: ours, given: initialWindow, window: initialWindow,
		sendCredit: initialWindow, wake: make(chan struct{}, 1), rwake: make(chan struct{}, 1),
	}
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
		poke(st.rwake) // a Read or Write waiting on the stream returns net.ErrClosed
		poke(st.wake)
	}
	g.mu.Unlock()
	g.wake()
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
