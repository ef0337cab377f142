package server

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/pipe"
	"github.com/tunnel-dev/tunnel/internal/wire"
	"github.com/tunnel-dev/tunnel/netfilter"
)

// ModeRaw is the mode field of the session lines of a plain TLS client:
// one connection, one stream to the raw route, no yamux.
const ModeRaw = "raw"

// fieldMode names the connection's mode in its session lines; tunnel
// sessions leave it out.
const fieldMode = "mode"

// rawConn is a live plain TLS client (no ALPN) served on the raw route. It
// is tracked so that Recheck can close it like a session.
type rawConn struct {
	tc    *tls.Conn
	id    string // audit.NewSessionID, as a session's
	since time.Time
	addr  string
	peer  Peer
	log   *logrus.Entry // carries the identity, addr and session_id fields
	bytes pipe.Counters // AToB towards the backend, BToA back
	// closeReason, if set, is the session_closed reason the server chose
	// (admin_close).
	closeReason atomic.Pointer[string]
}

// serveRaw carries one plain TLS client to the raw route: the client's
// certificate, address and revocation status were checked by the
// handshake exactly as for a tunnel client; what it lacks is the stream
// header, so the route is the listener's. It logs session_opened, then
// stream_closed and session_closed as a tunnel session would, counts as an
// open stream for the drain, and ends when ctx does. The caller closes tc.
func (s *Server) serveRaw(ctx context.Context, tc *tls.Conn, addr string, peer Peer) {
	route, _ := s.route(s.cfg.RawRoute) // Reload keeps the raw route configured
	id := audit.NewSessionID()
	log := s.log.WithFields(peer.Identity.Fields()).WithFields(logrus.Fields{audit.Addr: addr, audit.SessionID: id})
	if reason := route.Access.Decide(peer); reason != "" { // the route's own rules (server/authz.go)
		s.rawRefused(log, peer.Addr, wire.StatusForbidden, logrus.Fields{audit.Route: route.Name, audit.RuleSet: route.Access.Name, audit.Reason: reason},
			"raw connection refused: forbidden by the route's rules")
		return
	}
	rc := &rawConn{tc: tc, id: id, since: time.Now(), addr: addr, peer: peer, log: log}
	s.trackRaw(rc, true)
	defer s.trackRaw(rc, false)
	if reason, why := s.admitCheck(peer); reason != "" {
		log.WithFields(logrus.Fields{audit.Event: audit.SessionRevoked, fieldMode: ModeRaw, audit.Reason: reason}).Warn("closing raw connection: " + why)
		return
	}
	s.activeStreams.Add(1)
	defer s.activeStreams.Add(-1)
	s.stats.streamsTotal.Add(1)
	stop := context.AfterFunc(ctx, func() { tc.Close() }) // the drain is over
	defer stop()

	start := time.Now()
	log.WithFields(logrus.Fields{audit.Event: audit.SessionOpened, fieldMode: ModeRaw, audit.Route: route.Name}).
		Info("session opened")
	reason := s.copyRaw(ctx, rc, route, log)
	if r := rc.closeReason.Load(); r != nil {
		reason = *r
	}
	log.WithFields(logrus.Fields{
		audit.Event: audit.SessionClosed, fieldMode: ModeRaw, audit.Reason: reason,
		audit.DurationMS: time.Since(start).Milliseconds(),
	}).Info("session closed")
}

// copyRaw dials the route and copies both ways; it returns the reason the
// session ended. A backend that cannot be reached ends the connection: a
// plain TLS client has no status byte to read, so the close is the answer.
func (s *Server) copyRaw(ctx context.Context, rc *rawConn, route Route, log *logrus.Entry) string {
	tc := rc.tc
	backend, err := s.dialBackend(ctx, route, tc.RemoteAddr(), tc.LocalAddr())
	if err != nil {
		code := wire.StatusBackendUnreachable
		ip, _ := netfilter.PeerAddr(tc.RemoteAddr())
		s.rawRefused(log, ip, code, logrus.Fields{audit.Route: route.Name, audit.Error: err.Error()},
			"stream refused: "+code.String())
		return code.String()
	}
	log = log.WithFields(logrus.Fields{audit.Route: route.Name, audit.Backend: route.Target})
	log.WithField(audit.Event, audit.StreamOpened).Debug("stream opened")
	start := time.Now()
	in, out, err := pipe.Run(tc, backend, pipe.Options{Idle: s.cfg.IdleTimeout, Memory: s.memory, Count: &rc.bytes})
	s.stats.routes.add(route.Name, in, out)
	log.WithFields(audit.StreamClosedFields(in, out, start, err)).Info("stream closed")
	switch {
	case ctx.Err() != nil:
		return "closed"
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		return "peer_closed"
	}
	return "error"
}

// rawRefused counts a raw connection refused with code and logs it with
// fields, at most once per interval for each client address and status: a
// client can connect to be refused at will.
func (s *Server) rawRefused(log *logrus.Entry, ip netip.Addr, code wire.Status, fields logrus.Fields, msg string) {
	s.stats.refused[code].Add(1)
	n, _, ok := s.rejectLog.Hit(failKey{ip, "raw_" + code.String()})
	if !ok {
		return
	}
	fields[audit.Event] = audit.StreamRefused
	fields[fieldMode] = ModeRaw
	fields[audit.Status] = code.String()
	if n > 1 {
		fields[audit.Count] = n
	}
	log.WithFields(fields).Warn(msg)
}

// trackRaw adds (add) or removes rc from the live raw connections.
func (s *Server) trackRaw(rc *rawConn, add bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !add {
		delete(s.raws, rc)
		return
	}
	if s.raws == nil {
		s.raws = make(map[*rawConn]struct{})
	}
	s.raws[rc] = struct{}{}
}
