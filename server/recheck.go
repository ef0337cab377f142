package server

import (
	"crypto/x509"
	"net/netip"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/trust"
)

// Peer is what the server knows of a live session's client: what a new
// trust snapshot, CRL or allowlist is checked against.
type Peer struct {
	Addr     netip.Addr            // the client address the allowlist saw
	Identity trust.Identity        // of the verified leaf
	Chains   [][]*x509.Certificate // the verified chains, leaf first
}

// PeerCheck decides whether a live session may go on. It returns "" to keep
// the session, or a short snake_case reason ("revoked", "ca_removed",
// "ip_not_allowed") to close it. It must not block.
type PeerCheck func(Peer) (reason string)

// Recheck runs check against every live session and closes those it
// refuses, logging event with the reason and the peer's identity. A session
// that check keeps is also closed if it has a stream open on a route whose
// current rules refuse its peer (the route and rule set are logged too).
// Streams of a closed session end at once. It returns how many it closed.
// Safe for concurrent use; sessions that open while it runs are checked by
// their own handshake against the trust that is current by then.
func (s *Server) Recheck(event string, check PeerCheck) int {
	s.mu.Lock()
	var doomed []*session
	reasons := map[*session]logrus.Fields{}
	for ss := range s.sessions {
		r := check(ss.peer)
		fields := logrus.Fields{}
		if r == "" {
			r, fields = s.routeCheck(ss)
		}
		if r != "" {
			doomed = append(doomed, ss)
			fields[audit.Reason] = r
			reasons[ss] = fields
		}
	}
	s.mu.Unlock()
	for _, ss := range doomed {
		ss.log.WithFields(reasons[ss]).WithField(audit.Event, event).
			Warn("closing session: its client is no longer accepted")
		ss.mux.Close()
	}
	return len(doomed) + s.recheckRaw(event, check)
}

// RevocationCheck is a PeerCheck that refuses peers whose verified chain rc
// now finds revoked. A CRL that is merely unavailable does not close a live
// session, whatever the policy: that would turn a CRL server outage into an
// outage of every client.
func RevocationCheck(rc *trust.RevocationChecker) PeerCheck {
	return func(p Peer) string {
		if rc.Revoked(p.Chains) != nil {
			return trust.ReasonRevoked
		}
		return ""
	}
}

// AllowlistCheck is a PeerCheck that refuses peers whose address f no
// longer allows.
func AllowlistCheck(f *netfilter.Filter) PeerCheck {
	return func(p Peer) string {
		if !f.Allowed(p.Addr) {
			return netfilter.ReasonIPNotAllowed
		}
		return ""
	}
}
