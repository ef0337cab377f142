package server

import (
	"cmp"
	"errors"
	"slices"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/trust"
)

// What the server shows of itself while it runs (the admin listener's
// GET /status, tunnel status) and the one thing an operator may do to it
// there: close a session.

// SessionInfo is a live session, or a plain TLS client on the raw route,
// as the admin status shows it.
type SessionInfo struct {
	ID       string // audit.NewSessionID: the session_id of its log lines
	Mode     string // "" for a tunnel session, ModeRaw for a plain TLS client
	Identity trust.Identity
	Addr     string // the client's host:port (from its PROXY header, behind one)
	Since    time.Time
	// Streams are open now; StreamsTotal reached a backend since Since.
	Streams      int64
	StreamsTotal uint64
	// BytesIn went towards the backends and BytesOut back, counted as the
	// copies run.
	BytesIn, BytesOut int64
}

// Sessions returns the live sessions and raw connections, oldest first.
// Safe for concurrent use.
func (s *Server) Sessions() []SessionInfo {
	s.mu.Lock()
	out := make([]SessionInfo, 0, len(s.sessions)+len(s.raws))
	for ss := range s.sessions {
		out = append(out, SessionInfo{ID: ss.id, Identity: ss.peer.Identity, Addr: ss.addr, Since: ss.since,
			Streams: ss.active.Load(), StreamsTotal: ss.total.Load(),
			BytesIn: ss.bytes.AToB.Load(), BytesOut: ss.bytes.BToA.Load()})
	}
	for rc := range s.raws {
		out = append(out, SessionInfo{ID: rc.id, Mode: ModeRaw, Identity: rc.peer.Identity, Addr: rc.addr, Since: rc.since,
			Streams: 1, StreamsTotal: 1, BytesIn: rc.bytes.AToB.Load(), BytesOut: rc.bytes.BToA.Load()})
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b SessionInfo) int { return cmp.Or(a.Since.Compare(b.Since), cmp.Compare(a.ID, b.ID)) })
	return out
}

// RouteInfo is a configured route with its streams.
type RouteInfo struct {
	Name, Target string
	Proxy        string // "", "v1" or "v2": the PROXY header the backend gets
	Raw          bool   // the raw route, for plain TLS clients
	Open         int    // streams on it now, in every session
	RouteStats          // since start (kept across reloads, by name)
}

// Routes returns the routes configured now, by name, each with its open
// streams and its counters. Safe for concurrent use.
func (s *Server) Routes() []RouteInfo {
	p := s.policy.Load()
	stats := s.stats.routes.snapshot()
	open := map[string]int{}
	s.mu.Lock()
	for ss := range s.sessions {
		ss.use.addCounts(open)
	}
	open[s.cfg.RawRoute] += len(s.raws)
	s.mu.Unlock()
	out := make([]RouteInfo, 0, len(p.routes))
	for name, r := range p.routes {
		ri := RouteInfo{Name: name, Target: r.Target, Raw: name == s.cfg.RawRoute, Open: open[name], RouteStats: stats[name]}
		switch {
		case r.ProxyV1:
			ri.Proxy = "v1"
		case r.ProxyV2:
			ri.Proxy = "v2"
		}
		out = append(out, ri)
	}
	slices.SortFunc(out, func(a, b RouteInfo) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// addCounts adds the open streams of each route to m.
func (u *routeUse) addCounts(m map[string]int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for r, n := range u.open {
		m[r] += n
	}
}

// ErrNoSession is CloseSession's error for an id that names no live
// session.
var ErrNoSession = errors.New("server: no live session has that id")

// CloseSession closes the live session (or raw connection) whose id is id,
// as an operator asked (tunnel status --close): it logs session_closing,
// closes the connection at once (its streams end), and the session's own
// session_closed line follows with reason admin_close. The client is free
// to reconnect; to keep it out, revoke its certificate or change the
// allowlist. It returns ErrNoSession if no session has id. Safe for
// concurrent use.
func (s *Server) CloseSession(id string) error {
	reason := audit.ReasonAdminClose
	s.mu.Lock()
	var found *session
	for ss := range s.sessions {
		if ss.id == id {
			found = ss
		}
	}
	var raw *rawConn
	for rc := range s.raws {
		if rc.id == id {
			raw = rc
		}
	}
	s.mu.Unlock()
	switch {
	case found != nil:
		found.closeReason.Store(&reason)
		found.log.WithFields(logrus.Fields{audit.Event: audit.SessionClosing, audit.Reason: reason}).
			Warn("closing session: an operator asked for it")
		found.mux.Close()
	case raw != nil:
		raw.closeReason.Store(&reason)
		raw.log.WithFields(logrus.Fields{audit.Event: audit.SessionClosing, audit.Reason: reason, fieldMode: ModeRaw}).
			Warn("closing raw connection: an operator asked for it")
		raw.tc.Close()
	default:
		return ErrNoSession
	}
	return nil
}
