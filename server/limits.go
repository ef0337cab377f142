package server

import (
	"net"
	"net/netip"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/netfilter"
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

// ReasonSessionLimit is the conn_rejected reason of a session past
// Config.MaxSessionsPerIdentity.
const ReasonSessionLimit = "session_limit"

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
	s.connRejected(s.log.WithFields(ss.peer.Identity.Fields()), ss.peer.Addr, ss.addr, ReasonSessionLimit,
		"session refused: this identity holds --max-sessions-per-identity sessions already")
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
		ss.log.WithFields(logrus.Fields{audit.Event: audit.SessionExpiring, "lifetime": s.cfg.MaxSessionLifetime.String()}).
			Info("session reached --max-session-lifetime: no new streams; closing when its streams are done")
		ss.goAway()
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
