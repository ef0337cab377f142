package server

import (
	"errors"
	"fmt"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/trust"
)

// State is the part of a Server's configuration that a reload replaces,
// whole. Limits, timeouts and the listener are not in it: they take a
// restart.
type State struct {
	Material  *trust.Material      // the TLS material from now on; required
	Allowlist *netfilter.Allowlist // the client addresses the Filter admits from now on; required
	Routes    []Route              // replace Config.Routes, rules and all; Config.RawRoute must stay among them
	// Exposes replace the rules of Config.Exposes by name (the allowlist,
	// the publishers, the per-publisher cap; a per-address cap takes a
	// restart). An expose State lacks is removed: its publications are
	// withdrawn and its listener resets every connection until a restart.
	// One State adds is not served until a restart, which binds it.
	Exposes []Expose
}

// Reload applies st to the running server and closes the live sessions (and
// raw connections) that st no longer accepts, logging session_revoked for
// each. It works in this order:
//
//  1. check st: on error nothing changes (a *FieldError names the field);
//  2. publish the routes together with the check every session must pass
//     under st (a chain to the new CA pool, an address on the new
//     allowlist), and close the live sessions that fail it or whose open
//     streams' routes now refuse them;
//  3. swap the material into Config.Trust: handshakes from now on use it;
//  4. swap the allowlist into Config.Filter: connections from now on are
//     filtered by it;
//  5. have Config.Revocation (if set) take in the CRL files and CA bundle
//     that came with the material, then close the sessions it now finds
//     revoked.
//
// Step 2 comes first so that nothing slips through between the steps: a
// session tracked by then is rechecked at once, and one that completes its
// handshake later (it may have begun under the old material, or been
// accepted by the old allowlist) runs the published check right after its
// handshake. Streams opened after step 2 see the new rules by themselves.
// Reload returns how many connections it closed. It is safe for concurrent
// use, but meant for the one reload goroutine.
func (s *Server) Reload(st State) (closed int, err error) {
	switch {
	case s.cfg.Trust == nil:
		return 0, &FieldError{"Trust", errors.New("required to reload")}
	case st.Material == nil:
		return 0, errors.New("server: State.Material is nil")
	case st.Allowlist == nil:
		return 0, errors.New("server: State.Allowlist is nil")
	}
	p, err := newPolicy(st.Routes, s.cfg.RawRoute, s.running(st.Exposes))
	if err != nil {
		return 0, err
	}
	p.admit = joinChecks(trustCheck(st.Material), allowlistCheck(st.Allowlist))
	s.policy.Store(p)
	closed = s.Recheck(audit.SessionRevoked, p.admit)
	if s.cfg.RawRoute != "" {
		// A raw connection always uses the raw route.
		raw := p.routes[s.cfg.RawRoute]
		closed += s.recheckRaw(audit.SessionRevoked, func(peer Peer) string { return raw.Access.Decide(peer) })
	}
	s.withdrawRemoved()
	s.cfg.Trust.Swap(st.Material)
	if err := s.cfg.Filter.SetAllowlist(st.Allowlist); err != nil {
		return closed, err // unreachable: checked above
	}
	for name, x := range p.exposes {
		_ = s.exposes[name].filter.SetAllowlist(x.Allow) // never nil: checked by newPolicy
	}
	if rc := s.cfg.Revocation; rc != nil {
		rc.Reloaded()
		closed += s.Recheck(audit.SessionRevoked, RevocationCheck(rc))
	}
	return closed, nil
}

// policy is the part of a Server that Reload replaces: the routes with
// their rules, the exposes' rules, and the check every session must pass.
// It is never modified once published.
type policy struct {
	routes  map[string]Route
	exposes map[string]Expose // only those the server serves (Config.Exposes)
	admit   PeerCheck         // nil admits every peer
}

// newPolicy checks routes, and that rawRoute (if set) is one of them, and
// exposes, and indexes them by name: the one check of a server's routes
// and exposes, for New and Reload alike. Errors are *FieldError.
func newPolicy(routes []Route, rawRoute string, exposes []Expose) (*policy, error) {
	if len(routes) == 0 && len(exposes) == 0 {
		return nil, &FieldError{"Routes", errors.New("no routes configured (and no exposes)")}
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
	xs, err := checkExposes(exposes, m)
	if err != nil {
		return nil, err
	}
	return &policy{routes: m, exposes: xs}, nil
}

// running returns the exposes of xs that the server serves (Config.Exposes
// named them): those are the ones a reload may change.
func (s *Server) running(xs []Expose) []Expose {
	var out []Expose
	for _, x := range xs {
		if s.exposes[x.Name] != nil {
			out = append(out, x)
		}
	}
	return out
}

// route returns the current route named name.
func (s *Server) route(name string) (Route, bool) {
	r, ok := s.policy.Load().routes[name]
	return r, ok
}

// admitSession checks a session that has just been tracked against what
// may have changed during its handshake (admitCheck), and closes it if
// refused. It reports whether it may go on.
func (s *Server) admitSession(ss *session) bool {
	reason, why := s.admitCheck(ss.peer)
	if reason == "" {
		return true
	}
	ss.log.WithFields(logrus.Fields{audit.Event: audit.SessionRevoked, audit.Reason: reason}).
		Warn("closing session: " + why)
	ss.mux.Close()
	return false
}

// admitCheck runs, on a peer whose session or raw connection was just
// tracked, the checks a Recheck during its handshake would have run had it
// been tracked then: the current policy's (a reload) and revocation (a CRL
// or OCSP response that came in, such as the one a fail-open handshake
// itself sent for). Anything that changes later finds it tracked. It
// returns "" to go on, or the reason and why, for the log.
func (s *Server) admitCheck(p Peer) (reason, why string) {
	if check := s.policy.Load().admit; check != nil {
		if r := check(p); r != "" {
			return r, "its client is not accepted by the configuration loaded during its handshake"
		}
	}
	if rc := s.cfg.Revocation; rc != nil && rc.Revoked(p.Chains) != nil {
		return trust.ReasonRevoked, "its client's certificate was found revoked during its handshake"
	}
	return "", ""
}
