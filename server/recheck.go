package server

import (
	"crypto/x509"
	"net/netip"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/trust"
)

// ReasonCARemoved is the session_revoked reason of a session whose client
// chain no longer leads to a configured CA.
const ReasonCARemoved = "ca_removed"

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
// current rules refuse its peer (the route and rule set are logged too),
// or publishes a name whose expose's publishers rules now refuse it (the
// expose and rule set are logged): its publications end with it, and the
// inbound connections it carried are reset.
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
		if r == "" {
			r, fields = s.publishCheck(ss)
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

// recheckRaw is Recheck for the raw connections: it closes those check
// refuses, logging event with the reason, and returns how many.
func (s *Server) recheckRaw(event string, check PeerCheck) int {
	s.mu.Lock()
	doomed := map[*rawConn]string{}
	for rc := range s.raws {
		if r := check(rc.peer); r != "" {
			doomed[rc] = r
		}
	}
	s.mu.Unlock()
	for rc, reason := range doomed {
		rc.log.WithFields(logrus.Fields{audit.Event: event, audit.Reason: reason, fieldMode: ModeRaw}).
			Warn("closing raw connection: its client is no longer accepted")
		rc.tc.Close()
	}
	return len(doomed)
}

// routeCheck returns why ss may no longer use one of the routes it has
// streams open on, with the route and rule set, or "" if it may.
func (s *Server) routeCheck(ss *session) (string, logrus.Fields) {
	p := s.policy.Load()
	for _, name := range ss.use.routes() {
		r, ok := p.routes[name]
		if !ok {
			continue // a removed route: its open streams end by themselves
		}
		if reason := r.Access.Decide(ss.peer); reason != "" {
			return reason, logrus.Fields{audit.Route: name, audit.RuleSet: r.Access.Name}
		}
	}
	return "", nil
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

// allowlistCheck refuses peers whose address al does not hold.
func allowlistCheck(al *netfilter.Allowlist) PeerCheck {
	return func(p Peer) string {
		if !al.Contains(p.Addr) {
			return netfilter.ReasonIPNotAllowed
		}
		return ""
	}
}

// joinChecks runs checks in order and returns the first refusal.
func joinChecks(checks ...PeerCheck) PeerCheck {
	return func(p Peer) string {
		for _, c := range checks {
			if r := c(p); r != "" {
				return r
			}
		}
		return ""
	}
}

// trustCheck refuses a peer none of whose verified chains still verifies
// against m's CA pool (ReasonCARemoved): the CA that issued its certificate
// was taken out of the bundle. Each chain is checked as of a moment inside
// its validity window, so a certificate that expired during its session
// does not count as a removed CA.
func trustCheck(m *trust.Material) PeerCheck {
	return func(p Peer) string {
		for _, chain := range p.Chains {
			if chainVerifies(chain, m.CAPool) {
				return ""
			}
		}
		return ReasonCARemoved
	}
}

// chainVerifies re-verifies a chain's leaf against roots, with the chain's
// other certificates as intermediates, at the latest NotBefore of the chain.
func chainVerifies(chain []*x509.Certificate, roots *x509.CertPool) bool {
	if len(chain) == 0 || roots == nil {
		return false
	}
	var at time.Time
	inter := x509.NewCertPool()
	for i, c := range chain {
		if c.NotBefore.After(at) {
			at = c.NotBefore
		}
		if i > 0 {
			inter.AddCert(c)
		}
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: at.Add(time.Second),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	return err == nil
}
