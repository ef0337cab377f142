package server

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
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
	mux   *yamux.Session
	addr  string
	peer  Peer
	log   *logrus.Entry // carries the identity and addr fields
	slots chan struct{} // one token per open stream, cap MaxStreamsPerSession
	use   routeUse      // open streams per route, for the reload recheck

	limitLog *logthrottle.Throttle[string] // limit lines of this session, by reason
}

func (ss *session) goAway() {
	// An error means the session is already closing; nothing to tell.
	_ = ss.mux.GoAway()
}

// serveSession runs a yamux server session on tc until the peer or the
// server ends it, with one goroutine per stream, and waits for them.
func (s *Server) serveSession(ctx context.Context, tc *tls.Conn, addr string, peer Peer) {
	log := s.log.WithFields(peer.Identity.Fields()).WithField(audit.Addr, addr)
	m, err := mux.Server(tc, mux.Config(log, s.cfg.Keepalive, 0))
	if err != nil { // only a bad yamux.Config, which is ours
		log.WithError(err).Error("yamux server")
		return
	}
	ss := &session{mux: m, addr: addr, peer: peer, log: log, slots: make(chan struct{}, s.cfg.MaxStreamsPerSession),
		limitLog: &logthrottle.Throttle[string]{Interval: failLogInterval, Max: 8}}
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
	opens := s.streamLimiter()
	for {
		st, err := m.AcceptStream()
		if err != nil {
			endErr = err
			break
		}
		if !opens.Allow() {
			s.stats.limitStreamRate.Add(1)
			wg.Go(func() {
				ms := mux.Stream{Stream: st}
				s.refuse(ss, ms, "", wire.StatusOverLimit, errStreamRate)
				ms.Close()
			})
			continue
		}
		wg.Go(func() { s.serveStream(ctx, ss, st) })
	}
	m.Close()
	wg.Wait()
	log.WithFields(logrus.Fields{
		audit.Event: audit.SessionClosed, audit.Reason: sessionEndReason(endErr),
		audit.DurationMS: time.Since(start).Milliseconds(),
	}).Info("session closed")
}

// sessionEndReason names why a yamux session ended.
func sessionEndReason(err error) string {
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
