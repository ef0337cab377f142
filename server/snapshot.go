package server

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/trust"
)

// ReasonCARemoved is the session_revoked reason of a session whose client
// chain no longer leads to a configured CA.
const ReasonCARemoved = "ca_removed"

// policy is the part of a Server that Apply replaces: the routes with their
// rules, and the check every session must pass. It is never modified once
// published.
type policy struct {
	routes map[string]Route
	admit  PeerCheck // nil admits every peer
}

// Snapshot is the reloadable part of a Server's configuration.
type Snapshot struct {
	// Routes replace Config.Routes: at least one, names unique, and
	// Config.RawRoute, if set, still among them.
	Routes []Route

	// Admit is what every session must keep passing under the new trust
	// (for example JoinChecks(TrustCheck(m), AllowlistCheck(f))). Apply runs
	// it against every live session, and from then on every new session
	// runs it right after its handshake, which closes the gap of a handshake
	// that began under the old trust. Nil admits every peer.
	Admit PeerCheck
}

// Apply publishes snap for every stream and session that starts afterwards,
// then closes, as Recheck does and logging event, every live session that
// snap.Admit refuses or that has a stream open on a route whose new rules
// refuse it. Streams opened after Apply are checked against the new rules
// by themselves. It returns how many connections it closed, or an error
// (naming the bad route) and changes nothing. Safe for concurrent use; meant
// for the one reload goroutine.
func (s *Server) Apply(event string, snap Snapshot) (int, error) {
	p, err := newPolicy(snap.Routes, s.cfg.RawRoute)
	if err != nil {
		return 0, err
	}
	p.admit = snap.Admit
	s.policy.Store(p)
	n := s.Recheck(event, orAdmit(snap.Admit))
	if s.cfg.RawRoute != "" {
		// A raw connection always uses the raw route.
		raw := p.routes[s.cfg.RawRoute]
		n += s.recheckRaw(event, func(peer Peer) string { return raw.Access.Decide(peer) })
	}
	return n, nil
}

// newPolicy checks routes, and that rawRoute (if set) is one of them, and
// indexes them by name: the one check of a server's routes, for New and
// Reload alike. Errors are *FieldError.
func newPolicy(routes []Route, rawRoute string) (*policy, error) {
	if len(routes) == 0 {
		return nil, &FieldError{"Routes", errors.New("no routes configured")}
	}
	m := make(map[string]Route, len(routes))
	for _, r := range routes {
		if err := r.check(); err != nil {
			return nil, &FieldError{"Routes", fmt.Errorf("route %q: %w", r.Name, err)}
		}
		if _, dup := m[r.Name]; dup {
			return nil, &FieldError{"Routes", fmt.Errorf("route %q configured twice", r.Name)}
		}
		m[r.Name] = r
	}
	if _, ok := m[rawRoute]; rawRoute != "" && !ok {
		return nil, &FieldError{"RawRoute", fmt.Errorf("%q is not the name of a configured route", rawRoute)}
	}
	return &policy{routes: m}, nil
}

// route returns the current route named name.
func (s *Server) route(name string) (Route, bool) {
	r, ok := s.policy.Load().routes[name]
	return r, ok
}

// admitSession runs the current policy's check on a session that has just
// been tracked, and closes it if refused. It reports whether it may go on.
func (s *Server) admitSession(ss *session) bool {
	check := s.policy.Load().admit
	if check == nil {
		return true
	}
	reason := check(ss.peer)
	if reason == "" {
		return true
	}
	ss.log.WithFields(logrus.Fields{audit.Event: audit.SessionRevoked, audit.Reason: reason}).
		Warn("closing session: its client is not accepted by the configuration loaded during its handshake")
	ss.mux.Close()
	return false
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

func orAdmit(c PeerCheck) PeerCheck {
	if c == nil {
		return func(Peer) string { return "" }
	}
	return c
}

// JoinChecks returns a PeerCheck that runs checks in order and returns the
// first refusal. Nil checks are skipped.
func JoinChecks(checks ...PeerCheck) PeerCheck {
	return func(p Peer) string {
		for _, c := range checks {
			if c == nil {
				continue
			}
			if r := c(p); r != "" {
				return r
			}
		}
		return ""
	}
}

// TrustCheck is a PeerCheck that refuses a peer none of whose verified
// chains still verifies against m's CA pool (ReasonCARemoved): the CA that
// issued its certificate was taken out of the bundle. Each chain is checked
// as of a moment inside its validity window, so a certificate that expired
// during its session does not count as a removed CA.
func TrustCheck(m *trust.Material) PeerCheck {
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
