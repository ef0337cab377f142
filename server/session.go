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
	"github.com/tunnel-dev/tunnel/internal/wire"
)

// session is one client's yamux session over a verified TLS connection.
type session struct {
	mux    *mux.Session // set before any stream is served
	addr   string
	peer   Peer
	log    *logrus.Entry // carries the identity and addr fields
	active atomic.Int64  // streams being served
	use    routeUse      // open streams per route, for the reload recheck

	// refuseLog throttles the lines of refused streams and limits, by
	// status and reason: a client can cause them at will.
	refuseLog *logthrottle.Throttle[refusalKey]
}

func (ss *session) goAway() {
	// An error means the session is already closing; nothing to tell.
	_ = ss.mux.GoAway()
}

// serveSession runs a yamux server session on tc until the peer or the
// server ends it, with one goroutine per stream, and waits for them.
func (s *Server) serveSession(ctx context.Context, tc *tls.Conn, addr string, peer Peer) {
	log := s.log.WithFields(peer.Identity.Fields()).WithField(audit.Addr, addr)
	ss := &session{addr: addr, peer: peer, log: log,
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
	fields := logrus.Fields{
		audit.Event: audit.SessionClosed, audit.Reason: sessionEndReason(endErr),
		audit.DurationMS: time.Since(start).Milliseconds(),
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
