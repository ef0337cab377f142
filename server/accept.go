package server

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/alive"
	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/trust"
)

// The accept pipeline: what a connection goes through from Accept to its
// session, one step after another, each waiting on the peer under its own
// deadline. The functions below come in this order.
//
//	step          what                                               where, deadline
//	listener      the address filter in Accept, no I/O: a peer not   listen
//	              allowlisted is reset; a trusted PROXY-protocol
//	              upstream passes undecided
//	pending       the connection waits in the pending set, holding   prologue (pending.go)
//	              no handshake slot; a full set evicts its oldest
//	              silent connection
//	PROXY header  an upstream's header names the client; the         admit, ProxyHeaderTimeout
//	              allowlist and the per-address cap apply to it
//	first byte                                                       readHello, FirstByteTimeout
//	ClientHello   the rest of it, in whole records                   readHello, ClientHelloTimeout (clienthello.go)
//	slot          a handshake slot, once the whole ClientHello is    handle (slots.go)
//	              in: the server's first flight needs nothing more
//	              from the peer, so the slot bounds handshake work;
//	              a full set resets its oldest handshake waiting on
//	              its peer
//	handshake     mutual TLS; usage and revocation checks in         handshake, HandshakeTimeout
//	              VerifyConnection
//	session       by ALPN: a yamux session, the raw route, or        handle: serveSession (session.go),
//	              refused (no_alpn)                                  serveRaw (raw.go)

// Reasons of the conn_rejected events of the pipeline before a session.
const (
	// ReasonPendingEvicted: the pending set was full and this was its
	// oldest silent connection (or, with none silent, the oldest with an
	// unfinished ClientHello).
	ReasonPendingEvicted = "pending_evicted"
	// ReasonFirstByteTimeout: nothing came within FirstByteTimeout.
	ReasonFirstByteTimeout = "first_byte_timeout"
	// ReasonClientHelloTimeout: the ClientHello began but was not complete
	// within ClientHelloTimeout.
	ReasonClientHelloTimeout = "client_hello_timeout"
	// ReasonBadClientHello: the first records were larger than any
	// ClientHello crypto/tls accepts (maxPrologue).
	ReasonBadClientHello = "bad_client_hello"
	// ReasonHandshakeLimit is the conn_rejected reason for a connection refused
	// because MaxHandshakes handshakes were already in flight.
	ReasonHandshakeLimit = "handshake_limit"
	// ReasonNoALPN is the conn_rejected reason for a plain TLS client (one that
	// offered no ALPN protocol) when no raw route is configured.
	ReasonNoALPN = "no_alpn"
)

// Log throttling of the lines an attacker can cause at will: one
// handshake_failed line and one conn_rejected line (for refusals after the
// handshake) per address and reason, and one over_limit stream_refused line
// per session, every failLogInterval, each with the count it stands for.
// (The Filter throttles the conn_rejected lines before TLS the same way.)
const (
	failLogInterval = 10 * time.Second
	failLogKeys     = 4096
)

// The accept loop shows it is alive (Alive, the systemd watchdog) by
// beating each time round. An idle listener would block it in Accept for
// good, so when the socket has SetDeadline the loop wakes every aliveTick;
// it promises its next beat within aliveWithin, which leaves room for a
// busy machine.
const (
	aliveTick   = time.Second
	aliveWithin = 5 * time.Second
)

// deadliner is a listening socket whose Accept can be woken.
type deadliner interface{ SetDeadline(time.Time) error }

// Alive returns nil while the accept loop runs and keeps turning (it has
// not returned, and has not been stuck for several seconds), or why not.
// Before Serve it is an error. For the systemd watchdog; safe for
// concurrent use. With a listener that has no SetDeadline, an idle accept
// loop is taken to be alive.
func (s *Server) Alive() error { return s.alive.Check(time.Now()) }

// acceptLoop accepts until ln fails. Each connection gets a goroutine in wg.
// If wake is set (ln's socket), Accept is woken every aliveTick so the loop
// can beat while no one connects.
func (s *Server) acceptLoop(ctx, hard context.Context, ln net.Listener, wake deadliner, wg *sync.WaitGroup) error {
	defer s.alive.Stop()
	return acceptEach(ctx, ln, s.log, wg, &liveness{signal: &s.alive, wake: wake}, func(c net.Conn) { s.handle(ctx, hard, c) })
}

// liveness is what an accept loop beats (the main listener's, for the
// systemd watchdog) and the socket whose Accept it wakes to beat while idle.
type liveness struct {
	signal *alive.Signal
	wake   deadliner // nil: an idle loop blocks in Accept
}

// arm sets the next wake-up of l's socket; it returns how soon the loop
// promises its next beat.
func (l *liveness) arm() time.Duration {
	if l.wake != nil && l.wake.SetDeadline(time.Now().Add(aliveTick)) == nil {
		return aliveWithin
	}
	l.wake = nil
	return 100 * 365 * 24 * time.Hour // no wake-up: an idle loop blocks in Accept
}

// acceptEach accepts from ln until it is closed or ctx is done, and runs
// serve for each connection on a goroutine in wg. Other accept errors (out
// of file descriptors and the like) are logged and retried after a backoff
// of 5 ms doubling to 1 s, as net/http does, rather than spun on. With live
// set, the loop beats its signal each time round.
func acceptEach(ctx context.Context, ln net.Listener, log *logrus.Entry, wg *sync.WaitGroup, live *liveness, serve func(net.Conn)) error {
	var within time.Duration
	if live != nil {
		within = live.arm()
	}
	var backoff time.Duration
	for {
		if live != nil {
			live.signal.Beat(within)
		}
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if live != nil && live.wake != nil && errors.Is(err, os.ErrDeadlineExceeded) {
				within = live.arm() // a failure of SetDeadline ends the wake-ups
				continue
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			log.WithError(err).Errorf("accept failed; retrying in %v", backoff)
			select {
			case <-time.After(backoff):
				continue
			case <-ctx.Done():
				return nil
			}
		}
		backoff = 0
		if live != nil && live.wake != nil {
			within = live.arm()
		}
		wg.Go(func() { serve(c) })
	}
}

// listen wraps ln with the address filter: with trusted PROXY-protocol
// upstreams, connections from them pass Accept undecided and admit decides
// on the address from their header.
func (s *Server) listen(ln net.Listener) net.Listener {
	if s.cfg.ProxyProtocolFrom == nil || s.cfg.ProxyProtocolFrom.Len() == 0 {
		return s.cfg.Filter.WrapListener(ln)
	}
	return s.cfg.Filter.WrapProxyListener(ln, s.cfg.ProxyProtocolFrom)
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
	if cs.DidResume {
		s.stats.handshakesResumed.Add(1)
	}
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

// prologue runs the steps before the handshake. It returns the connection
// to use from then on, whose RemoteAddr is the client's and which the
// caller closes, and the ClientHello bytes it read, which the handshake must
// be given first (helloConn). It returns false when c was refused, evicted,
// closed by the peer or by shutdown; each case is logged and counted where
// it happened, and the caller only closes the connection.
func (s *Server) prologue(c net.Conn) (net.Conn, []byte, bool) {
	ip, _ := netfilter.PeerAddr(c.RemoteAddr()) // an upstream's address until its header names the client
	pc, v := s.pending.add(c, ip)
	if v != nil {
		s.evict(*v)
	}
	if pc == nil { // shutting down
		return c, nil, false
	}
	defer s.pending.leave(pc)

	c, ok := s.admit(c, pc)
	if !ok {
		return c, nil, false
	}
	ip, _ = netfilter.PeerAddr(c.RemoteAddr())
	s.pending.setAddr(pc, ip)

	hello, err := s.readHello(c, pc)
	switch {
	case err == nil:
		if !s.pending.leave(pc) { // evicted just now; the reset is on its way
			return c, nil, false
		}
		return c, hello, true
	case s.pending.isGone(pc):
		// Evicted (logged by the evictor) or shut down: nothing to add.
	case errors.Is(err, os.ErrDeadlineExceeded) && len(hello) == 0:
		s.cfg.Filter.Reject(c, ip, ReasonFirstByteTimeout)
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.cfg.Filter.Reject(c, ip, ReasonClientHelloTimeout)
	case errors.Is(err, errHelloTooLarge):
		s.cfg.Filter.Reject(c, ip, ReasonBadClientHello)
	default:
		// The peer left or reset before its ClientHello was complete: a
		// port check, or a client giving up. A handshake that read EOF
		// logged this before the prologue existed; it still does.
		s.stats.handshakesFailed.Add(1)
		s.handshakeFailed(c, c.RemoteAddr().String(), trust.FailureReason(err), err)
	}
	return c, nil, false
}

// admit is the prologue step that reads a trusted upstream's PROXY header
// (under ProxyHeaderTimeout; the connection is pending meanwhile, as pc)
// and applies the allowlist and the per-address cap to the client address it
// names. It returns the connection to use from then on, whose RemoteAddr is
// the client's, or c and false when c was refused (reset, counted and logged
// by the filter), was a health check, or was evicted or shut down while it
// waited. A connection that is not from an upstream was filtered in Accept
// and passes unchanged.
func (s *Server) admit(c net.Conn, pc *pendingConn) (net.Conn, bool) {
	up, ok := c.(*netfilter.UpstreamConn)
	if !ok {
		return c, true
	}
	proxied, err := up.ReadHeader(s.cfg.ProxyHeaderTimeout)
	switch {
	case err != nil && s.pending.isGone(pc):
		return c, false // evicted (logged by the evictor) or shut down
	case errors.Is(err, netfilter.ErrUpstreamProbe):
		s.log.WithFields(logrus.Fields{audit.Addr: c.RemoteAddr().String()}).Debug("upstream health check")
		return c, false
	case err != nil:
		// The filter's rate-limited conn_rejected line is the audit event;
		// this one adds the parse error for whoever debugs the balancer.
		s.log.WithFields(logrus.Fields{audit.Addr: c.RemoteAddr().String(), audit.Error: err.Error()}).
			Debug("no valid PROXY header from a trusted upstream")
		s.cfg.Filter.Reject(c, up.Upstream(), netfilter.ReasonProxyHeader)
		return c, false
	}
	ip, ok := netfilter.PeerAddr(proxied.RemoteAddr())
	if !ok || !s.cfg.Filter.Allowed(ip) {
		s.cfg.Filter.Reject(proxied, ip, netfilter.ReasonIPNotAllowed)
		return c, false
	}
	held, ok := s.cfg.Filter.Hold(proxied, ip)
	if !ok {
		s.cfg.Filter.Reject(proxied, ip, netfilter.ReasonConnLimit)
		return c, false
	}
	return held, true
}

// readHello waits up to FirstByteTimeout for c's first byte, then up to
// ClientHelloTimeout for the rest of its ClientHello, and clears the
// deadline. It moves pc to the ClientHello stage when the first byte comes,
// and accounts its buffer in the pending set's byte budget.
func (s *Server) readHello(c net.Conn, pc *pendingConn) ([]byte, error) {
	if err := c.SetReadDeadline(time.Now().Add(s.cfg.FirstByteTimeout)); err != nil {
		return nil, err
	}
	first := true
	hello, err := readClientHello(c, func(size int) {
		if first {
			first = false
			s.pending.started(pc)
			_ = c.SetReadDeadline(time.Now().Add(s.cfg.ClientHelloTimeout)) // a failure shows on the next read
		}
		for _, v := range s.pending.hold(pc, size) {
			s.evict(v)
		}
	})
	_ = c.SetReadDeadline(time.Time{})
	return hello, err
}

// evict resets a connection the pending set took out to make room.
func (s *Server) evict(v victim) {
	s.stats.pendingEvicted.Add(1)
	s.cfg.Filter.Reject(v.conn, v.ip, ReasonPendingEvicted)
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

// failKey is what handshake_failed lines are throttled by.
type failKey struct {
	addr   netip.Addr
	reason string
}

// handshakeFailed logs a failed handshake, throttled per address and
// reason: a flood of garbage from one address writes a line per interval.
func (s *Server) handshakeFailed(c net.Conn, addr, reason string, err error) {
	ip, _ := netfilter.PeerAddr(c.RemoteAddr())
	n, _, ok := s.failLog.Hit(failKey{ip, reason})
	if !ok {
		return
	}
	fields := logrus.Fields{audit.Event: audit.HandshakeFailed, audit.Reason: reason, audit.Addr: addr, audit.Error: err.Error()}
	if n > 1 {
		fields[audit.Count] = n
	}
	s.log.WithFields(fields).Warn("handshake failed")
}

// connRejected logs a conn_rejected line for a connection refused after
// its handshake (no_alpn, session_limit), throttled per address and reason
// as handshakeFailed is: a peer reconnecting in a loop writes a line per
// interval, with the count it stands for.
func (s *Server) connRejected(log *logrus.Entry, ip netip.Addr, addr, reason, msg string) {
	n, _, ok := s.rejectLog.Hit(failKey{ip, reason})
	if !ok {
		return
	}
	fields := logrus.Fields{audit.Event: audit.ConnRejected, audit.Reason: reason, audit.Addr: addr}
	if n > 1 {
		fields[audit.Count] = n
	}
	log.WithFields(fields).Warn(msg)
}
