// Package server is the tunnel's server role: it accepts TCP, filters peers by
// address, completes mutual TLS and serves yamux streams to named backends.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"maps"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/logthrottle"
	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/internal/wire"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/trust"
)

// ReasonHandshakeLimit is the conn_rejected reason for a connection refused
// because MaxHandshakes handshakes were already in flight.
const ReasonHandshakeLimit = "handshake_limit"

// ReasonNoALPN is the conn_rejected reason for a plain TLS client (one that
// offered no ALPN protocol) when no raw route is configured.
const ReasonNoALPN = "no_alpn"

// ErrShutdownForced is returned by Serve when streams were still open at the
// end of the shutdown timeout and were cut.
var ErrShutdownForced = errors.New("server: shutdown timeout: open streams were closed")

// Server serves tunnel clients. Create it with New; it is safe for
// concurrent use, and Serve may be called once.
type Server struct {
	cfg     Config
	log     *logrus.Entry
	policy  atomic.Pointer[policy] // routes and rules; replaced whole by Reload
	slots   *slotSet               // handshakes in flight
	pending *pendingSet            // connections in their prologue

	mu         sync.Mutex
	sessions   map[*session]struct{} // guarded by mu
	raws       map[*rawConn]struct{} // plain TLS clients on the raw route; made lazily; guarded by mu
	identities map[string]int        // yamux sessions per identity fingerprint; guarded by mu

	failLog   *logthrottle.Throttle[failKey] // handshake_failed lines
	rejectLog *logthrottle.Throttle[failKey] // conn_rejected lines after the handshake
	memory    *mux.Budget                    // all sessions' stream buffers; each session's Budget is under it

	activeStreams atomic.Int64
	stats         counters
}

// New checks cfg, fills in its defaults and returns a Server. It starts no
// goroutine and opens nothing. Errors are *FieldError.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	p, err := newPolicy(cfg.Routes, cfg.RawRoute)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:        cfg,
		log:        cfg.Log,
		slots:      &slotSet{max: cfg.MaxHandshakes},
		pending:    &pendingSet{max: cfg.MaxPending},
		sessions:   make(map[*session]struct{}),
		identities: make(map[string]int),
		failLog:    &logthrottle.Throttle[failKey]{Interval: failLogInterval, Max: failLogKeys},
		rejectLog:  &logthrottle.Throttle[failKey]{Interval: failLogInterval, Max: failLogKeys},
		memory:     mux.NewBudget(cfg.MemoryBudget, nil),
	}
	s.stats.violations = make(map[string]*atomic.Uint64, len(mux.ViolationKinds))
	for _, k := range mux.ViolationKinds {
		s.stats.violations[k] = new(atomic.Uint64)
	}
	s.policy.Store(p)
	if rc := cfg.Revocation; rc != nil {
		// A CRL that changed (fetched, or a CRL file reloaded) closes the
		// live sessions whose chain it now revokes.
		rc.OnUpdate(func() { s.Recheck(audit.SessionRevoked, RevocationCheck(rc)) })
	}
	return s, nil
}

// Serve accepts connections on ln until ctx is done, then shuts down
// gracefully: it closes ln, tells every session to open no new stream
// (yamux GoAway), waits up to ShutdownTimeout for open streams to finish, closes
// what remains and returns once every goroutine it started has ended. It
// returns nil after a clean drain, ErrShutdownForced if streams were cut,
// or the listener's error if accepting failed for good. Serve closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ln = s.listen(ln) // the address filter; PROXY-protocol upstreams pass to admit
	s.log.WithFields(logrus.Fields{audit.Event: audit.ListenerStarted, audit.Listen: ln.Addr().String()}).
		Info("server listening")

	// hard outlives ctx: it carries the sessions and streams that may still
	// finish during the drain, and is cancelled when the drain is over.
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()

	var wg sync.WaitGroup
	acceptErr := make(chan error, 1)
	wg.Go(func() { acceptErr <- s.acceptLoop(ctx, hard, ln, &wg) })

	var err error
	select {
	case <-ctx.Done():
	case err = <-acceptErr:
	}
	ln.Close()
	s.pending.shutdown() // nothing waits for a first byte past Serve
	s.log.WithFields(logrus.Fields{audit.Event: audit.ServerStopping, "open_streams": s.activeStreams.Load()}).
		Info("server stopping: no new connections or streams")
	if !s.drain(s.cfg.ShutdownTimeout) {
		err = errors.Join(err, ErrShutdownForced)
	}
	cancelHard()
	s.closeSessions()
	wg.Wait()
	return err
}

// acceptLoop accepts until ln fails. Each connection gets a goroutine in wg.
func (s *Server) acceptLoop(ctx, hard context.Context, ln net.Listener, wg *sync.WaitGroup) error {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of file descriptors and the like: back off as
			// net/http does, rather than spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.WithError(err).Errorf("accept failed; retrying in %v", backoff)
			select {
			case <-time.After(backoff):
				continue
			case <-ctx.Done():
				return nil
			}
		}
		backoff = 0
		wg.Go(func() { s.handle(ctx, hard, c) })
	}
}

// handle owns c until it returns. It runs the accept pipeline's steps for
// one connection, top to bottom, each under its own deadline:
//
//	prologue (pending, no slot): PROXY header -> first byte -> ClientHello
//	handshake slot -> TLS handshake -> session or raw stream, by ALPN
func (s *Server) handle(ctx, hard context.Context, c net.Conn) {
	defer func() { c.Close() }() // c as the steps rewrap it: the last wrapper closes them all
	c, hello, ok := s.prologue(c)
	if !ok {
		return
	}
	ip, _ := netfilter.PeerAddr(c.RemoteAddr())
	sl, v := s.slots.take(c, ip)
	if v != nil {
		s.stats.handshakesEvicted.Add(1)
		s.cfg.Filter.Reject(v.conn, v.ip, ReasonHandshakeEvicted)
	}
	if sl == nil { // every slot is working
		s.stats.handshakeLimit.Add(1)
		s.cfg.Filter.Reject(c, ip, ReasonHandshakeLimit)
		return
	}
	addr := c.RemoteAddr().String()
	began := time.Now()
	hc := &helloConn{Conn: c, hello: hello, slot: sl}
	tc, err := s.handshake(ctx, hc)
	hc.slot = nil // nothing reads or writes hc meanwhile: the session starts below
	if !s.slots.release(sl) {
		return // evicted while it waited on its peer: logged and counted by the evictor
	}
	if err != nil {
		s.stats.handshakesFailed.Add(1)
		s.handshakeFailed(c, addr, handshakeReason(ctx, err), err)
		return
	}
	s.stats.handshakeTime.observe(time.Since(began))
	s.stats.handshakesOK.Add(1)
	cs := tc.ConnectionState()
	id, _ := trust.PeerIdentity(cs)
	peer := Peer{Addr: ip, Identity: id, Chains: cs.VerifiedChains}
	switch cs.NegotiatedProtocol {
	case trust.ALPNTunnel:
		s.serveSession(hard, tc, addr, peer)
	case "":
		if s.cfg.RawRoute != "" {
			s.serveRaw(hard, tc, addr, peer)
			return
		}
		fallthrough
	default:
		// A plain TLS client (no ALPN): only a raw route could serve it,
		// and none is configured.
		s.stats.noALPN.Add(1)
		s.connRejected(s.log.WithFields(id.Fields()), ip, addr, ReasonNoALPN,
			"client offered no ALPN protocol and no raw route is configured")
	}
}

// handshake runs the TLS handshake under HandshakeTimeout.
func (s *Server) handshake(ctx context.Context, c net.Conn) (*tls.Conn, error) {
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	// The Transport batches a yamux frame's TLS records into one syscall
	// and reads several records per syscall (internal/mux).
	tc := tls.Server(mux.NewTransport(c), s.cfg.TLS)
	if err := tc.HandshakeContext(hctx); err != nil {
		return nil, err
	}
	return tc, nil
}

// handshakeReason names why a handshake failed for the audit line.
func handshakeReason(ctx context.Context, err error) string {
	switch {
	case ctx.Err() != nil:
		return "shutdown"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return trust.FailureReason(err)
}

// drain waits until no stream is open or d has passed, and reports whether
// the drain was clean. Sessions were told to go away first.
func (s *Server) drain(d time.Duration) bool {
	s.mu.Lock()
	for ss := range s.sessions {
		ss.goAway()
	}
	s.mu.Unlock()
	deadline := time.Now().Add(d)
	for s.activeStreams.Load() > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond) // poll, as http.Server.Shutdown does
	}
	return true
}

func (s *Server) closeSessions() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ss := range s.sessions {
		ss.mux.Close()
	}
}

func (s *Server) track(ss *session) {
	s.mu.Lock()
	s.sessions[ss] = struct{}{}
	s.mu.Unlock()
}

func (s *Server) untrack(ss *session) {
	s.mu.Lock()
	delete(s.sessions, ss)
	s.mu.Unlock()
}

// Stats is a snapshot of the server's counters.
type Stats struct {
	// HandshakeLimit counts connections refused because every handshake
	// slot was working; HandshakesEvicted, handshakes reset to make room
	// for a newcomer because they were the oldest waiting on their peer.
	HandshakesOK, HandshakesFailed, HandshakeLimit, HandshakesEvicted uint64
	// HandshakesInFlight are the handshakes holding a slot now, and
	// HandshakesWaiting those of them waiting for their peer's next
	// flight (the server's is written).
	HandshakesInFlight, HandshakesWaiting int
	// Pending are the connections in their prologue now, by stage:
	// "silent" (waiting for a PROXY header or a first byte) and
	// "client_hello" (a ClientHello begun, not complete). Both keys are
	// always present.
	Pending map[string]int
	// Rejected counts the conn_rejected events by reason: those before
	// TLS, which the Filter counts (ip_not_allowed, conn_limit,
	// proxy_header, handshake_limit, handshake_evicted, pending_evicted,
	// first_byte_timeout, client_hello_timeout, bad_client_hello), and
	// those after the handshake (no_alpn, session_limit). Every reason in
	// RejectReasons is present, zero or not.
	Rejected       map[string]uint64
	SessionsActive int
	StreamsActive  int64
	StreamsTotal   uint64
	StreamsRefused map[string]uint64 // by status name, every refusal status present
	// LimitHits counts the limits hit, by name: "handshakes" (a newcomer
	// found every slot taken: refused, or let in by an eviction), "pending"
	// (evictions from a full pending set), "sessions_per_identity",
	// "streams_per_session", "stream_rate", "memory_budget" (streams
	// refused or reset for the budget). (The per-address connection cap is
	// the Filter's: Rejected["conn_limit"].)
	LimitHits map[string]uint64
	// Violations counts sessions ended by the frame guard, by kind (every
	// mux.ViolationKinds entry, zero included).
	Violations map[string]uint64
	// MemoryHeld and MemoryBudget are the bytes all sessions' streams and
	// copy buffers hold, and the bound on them.
	MemoryHeld, MemoryBudget int64
	// HandshakeDuration is one successful handshake, from its complete
	// ClientHello (the prologue's waits are not in it); DialDuration is one
	// successful backend dial.
	HandshakeDuration, DialDuration Histogram
	// Routes are the counters of each route that carried a stream.
	Routes map[string]RouteStats
}

// RejectReasons are the reasons of every conn_rejected event a Server and
// its Filter log, for metrics that show each one from the start.
var RejectReasons = []string{
	netfilter.ReasonIPNotAllowed, netfilter.ReasonConnLimit, netfilter.ReasonProxyHeader,
	ReasonPendingEvicted, ReasonFirstByteTimeout, ReasonClientHelloTimeout, ReasonBadClientHello,
	ReasonHandshakeLimit, ReasonHandshakeEvicted, ReasonNoALPN, ReasonSessionLimit,
}

type counters struct {
	handshakesOK, handshakesFailed, handshakeLimit atomic.Uint64
	handshakesEvicted                              atomic.Uint64
	pendingEvicted                                 atomic.Uint64
	noALPN                                         atomic.Uint64
	streamsTotal                                   atomic.Uint64
	refused                                        [6]atomic.Uint64 // by wire.Status
	limitSessions, limitStreams, limitStreamRate   atomic.Uint64
	limitBudget                                    atomic.Uint64
	violations                                     map[string]*atomic.Uint64 // by kind; made by New, then read-only
	handshakeTime, dialTime                        histogram
	routes                                         routeTable
}

// Stats returns a snapshot of the counters; safe for concurrent use.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	n := len(s.sessions)
	s.mu.Unlock()
	silent, hello, _ := s.pending.counts()
	inFlight, waiting := s.slots.counts()
	st := Stats{
		HandshakesOK:       s.stats.handshakesOK.Load(),
		HandshakesFailed:   s.stats.handshakesFailed.Load(),
		HandshakeLimit:     s.stats.handshakeLimit.Load(),
		HandshakesEvicted:  s.stats.handshakesEvicted.Load(),
		HandshakesInFlight: inFlight,
		HandshakesWaiting:  waiting,
		Pending:            map[string]int{stageSilent.String(): silent, stageHello.String(): hello},
		Rejected:           make(map[string]uint64),
		SessionsActive:     n,
		StreamsActive:      s.activeStreams.Load(),
		StreamsTotal:       s.stats.streamsTotal.Load(),
		StreamsRefused:     make(map[string]uint64),
		LimitHits: map[string]uint64{
			"handshakes":            s.stats.handshakeLimit.Load() + s.stats.handshakesEvicted.Load(),
			"pending":               s.stats.pendingEvicted.Load(),
			"sessions_per_identity": s.stats.limitSessions.Load(),
			"streams_per_session":   s.stats.limitStreams.Load(),
			"stream_rate":           s.stats.limitStreamRate.Load(),
			"memory_budget":         s.stats.limitBudget.Load(),
		},
		Violations:        make(map[string]uint64, len(s.stats.violations)),
		MemoryHeld:        s.memory.Held(),
		MemoryBudget:      s.memory.Limit(),
		HandshakeDuration: s.stats.handshakeTime.snapshot(),
		DialDuration:      s.stats.dialTime.snapshot(),
		Routes:            s.stats.routes.snapshot(),
	}
	for _, r := range RejectReasons {
		st.Rejected[r] = 0
	}
	maps.Copy(st.Rejected, s.cfg.Filter.Stats().Rejected)
	st.Rejected[ReasonNoALPN] = s.stats.noALPN.Load()
	st.Rejected[ReasonSessionLimit] = s.stats.limitSessions.Load()
	for i := range s.stats.refused {
		if i > 0 { // every refusal status, zero included
			st.StreamsRefused[wire.Status(i).String()] = s.stats.refused[i].Load()
		}
	}
	for k, v := range s.stats.violations {
		st.Violations[k] = v.Load()
	}
	return st
}

// violation counts a session the guard ended, by kind.
func (c *counters) violation(kind string) {
	if v := c.violations[kind]; v != nil {
		v.Add(1)
	}
}
