package server

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/logthrottle"
	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/internal/pipe"
	"github.com/tunnel-dev/tunnel/internal/testhook"
	"github.com/tunnel-dev/tunnel/internal/wire"
)

// session is one client's yamux session over a verified TLS connection.
type session struct {
	mux    *mux.Session // set before any stream is served
	id     string       // audit.NewSessionID: on every line of the session
	since  time.Time
	addr   string
	peer   Peer
	log    *logrus.Entry // carries the identity, addr and session_id fields
	active atomic.Int64  // streams being served, reverse streams included
	total  atomic.Uint64 // streams that reached their backend or publisher's target
	bytes  pipe.Counters // AToB from the client's side, BToA towards it, as the copies run
	away   atomic.Bool   // the server sent GoAway: no publication from now on
	use    routeUse      // open streams per route, for the reload recheck
	// closeReason, if set, is the session_closed reason of a session the
	// server chose to end (admin_close), instead of the one its end gives.
	closeReason atomic.Pointer[string]

	// refuseLog throttles the lines of refused streams and limits, by
	// status and reason: a client can cause them at will.
	refuseLog *logthrottle.Throttle[refusalKey]
}

// goAway tells ss's client to open no more streams (it redials for new
// ones) and withdraws ss's publications, which its client makes again on
// its next session.
func (s *Server) goAway(ss *session, reason string) {
	ss.away.Store(true)
	// An error means the session is already closing; nothing to tell.
	_ = ss.mux.GoAway()
	s.withdrawSession(ss, reason)
}

// serveSession runs a yamux server session on tc until the peer or the
// server ends it, with one goroutine per stream, and waits for them.
func (s *Server) serveSession(ctx context.Context, tc *tls.Conn, addr string, peer Peer) {
	id := audit.NewSessionID()
	log := s.log.WithFields(peer.Identity.Fields()).WithFields(logrus.Fields{audit.Addr: addr, audit.SessionID: id})
	ss := &session{id: id, since: time.Now(), addr: addr, peer: peer, log: log,
		refuseLog: &logthrottle.Throttle[refusalKey]{Interval: failLogInterval, Max: 32}}
	m, err := mux.Server(tc, mux.Options{
		Log:        log,
		Keepalive:  s.cfg.Keepalive,
		MaxStreams: s.cfg.MaxStreamsPerSession,
		StreamRate: float64(s.cfg.StreamRate),
		Refusal:    []byte{byte(wire.StatusOverLimit)},
		Budget:     mux.NewBudget(s.cfg.SessionMemory, s.memory),
		MaxWindow:  s.cfg.MaxWindow,
		OnLimit:    func(e mux.LimitEvent) { s.limited(ss, e) },
	})
	if err != nil { // only bad Options, which are ours
		log.WithError(err).Error("yamux server")
		tc.Close()
		return
	}
	ss.mux = m
	// In the test build, held here while the file TUNNEL_TEST_HOLD_SESSION
	// names exists: between the handshake's checks and the tracking.
	testhook.Hold("TUNNEL_TEST_HOLD_SESSION")
	s.track(ss)
	defer s.untrack(ss)
	if !s.admitSession(ss) { // the trust may have been reloaded during the handshake
		return
	}
	if !s.holdIdentity(ss) {
		return
	}
	defer s.releaseIdentity(ss)
	defer s.expire(ss)()
	// The drain is over when ctx ends: close the session even if it was
	// tracked after closeSessions ran.
	stop := context.AfterFunc(ctx, func() { m.Close() })
	defer stop()
	start := time.Now()
	log.WithField(audit.Event, audit.SessionOpened).Info("session opened")

	var wg sync.WaitGroup
	var endErr error
	for {
		st, err := m.Accept()
		if err != nil {
			endErr = err
			break
		}
		wg.Go(func() { s.serveStream(ctx, ss, st) })
	}
	m.Close()
	wg.Wait()
	s.flushRefusals(ss)
	reason := sessionEndReason(endErr)
	if r := ss.closeReason.Load(); r != nil {
		reason = *r
	}
	fields := logrus.Fields{
		audit.Event: audit.SessionClosed, audit.Reason: reason,
		audit.DurationMS: time.Since(start).Milliseconds(),
		audit.BytesIn:    ss.bytes.AToB.Load(), audit.BytesOut: ss.bytes.BToA.Load(),
	}
	if v := m.Violation(); v != nil {
		s.stats.violation(v.Kind)
		log.WithFields(logrus.Fields{audit.Event: audit.ProtocolViolation, audit.Kind: v.Kind, audit.Error: v.Detail}).
			Warn("closing session: the client broke the yamux protocol or a session bound")
		fields[audit.Kind] = v.Kind
	}
	log.WithFields(fields).Info("session closed")
}

// sessionEndReason names why a yamux session ended.
func sessionEndReason(err error) string {
	if _, ok := errors.AsType[*mux.ViolationError](err); ok {
		return audit.ProtocolViolation
	}
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		return "peer_closed"
	case errors.Is(err, yamux.ErrKeepAliveTimeout):
		return "keepalive_timeout"
	case errors.Is(err, yamux.ErrConnectionWriteTimeout):
		return "write_timeout"
	case errors.Is(err, yamux.ErrSessionShutdown):
		return "closed"
	case errors.Is(err, yamux.ErrInvalidVersion), errors.Is(err, yamux.ErrInvalidMsgType):
		return "protocol_error"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "error"
}

// holdIdentity counts ss against its identity's session cap, or closes it
// if the identity is at the cap. It reports whether ss may go on; if so,
// releaseIdentity must follow.
func (s *Server) holdIdentity(ss *session) bool {
	fp := ss.peer.Identity.Fingerprint
	s.mu.Lock()
	ok := s.identities[fp] < s.cfg.MaxSessionsPerIdentity
	if ok {
		s.identities[fp]++
	}
	s.mu.Unlock()
	if ok {
		return true
	}
	s.stats.limitSessions.Add(1)
	s.connRejected(s.log.WithFields(ss.peer.Identity.Fields()).WithField(audit.Limit, limitMaxSessions), ss.peer.Addr, ss.addr, ReasonSessionLimit,
		"session refused: this identity holds as many sessions as one identity may")
	ss.mux.Close()
	return false
}

func (s *Server) releaseIdentity(ss *session) {
	fp := ss.peer.Identity.Fingerprint
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.identities[fp] <= 1 {
		delete(s.identities, fp)
		return
	}
	s.identities[fp]--
}

// expire ends ss gracefully once it has lived MaxSessionLifetime: GoAway,
// then close once its streams are done or ShutdownTimeout has passed. It
// returns a function that cancels it.
func (s *Server) expire(ss *session) (stop func()) {
	if s.cfg.MaxSessionLifetime <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	t := time.AfterFunc(s.cfg.MaxSessionLifetime, func() {
		ss.log.WithFields(logrus.Fields{audit.Event: audit.SessionExpiring, "lifetime": s.cfg.MaxSessionLifetime.String(), audit.Limit: limitMaxLifetime}).
			Info("session reached its maximum lifetime: no new streams; closing when its streams are done")
		s.goAway(ss, "session_expiring")
		deadline := time.Now().Add(s.cfg.ShutdownTimeout)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for ss.active.Load() > 0 && time.Now().Before(deadline) {
			select {
			case <-tick.C:
			case <-done:
				return
			}
		}
		ss.mux.Close()
	})
	return func() {
		close(done)
		t.Stop()
	}
}

// ReasonSessionLimit is the conn_rejected reason of a session past
// Config.MaxSessionsPerIdentity.
const ReasonSessionLimit = "session_limit"
