package client

import (
	"cmp"
	"errors"
	"slices"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/trust"
)

// What the client shows of itself while it runs (the admin listener's
// GET /status, tunnel status), and closing its session by id.

// forwardState is a forward being served: its bound address and its
// local connections.
type forwardState struct {
	addr  string // the bound listening address
	open  atomic.Int64
	total atomic.Uint64
}

// trackForward registers f, bound on addr, for Forwards.
func (c *Client) trackForward(f Forward, addr string) *forwardState {
	st := &forwardState{addr: addr}
	c.fwdMu.Lock()
	defer c.fwdMu.Unlock()
	if c.fwds == nil {
		c.fwds = map[Forward]*forwardState{}
	}
	c.fwds[f] = st
	return st
}

// untrackForward forgets f once its listener is closed, unless a newer
// listener for f took its place.
func (c *Client) untrackForward(f Forward, st *forwardState) {
	c.fwdMu.Lock()
	defer c.fwdMu.Unlock()
	if c.fwds[f] == st {
		delete(c.fwds, f)
	}
}

// ForwardInfo is a forward being served.
type ForwardInfo struct {
	Listen string // as configured ("127.0.0.1:0", "systemd:db")
	Addr   string // the address bound
	Route  string
	// Open are its local connections now; Total since it was bound.
	Open  int64
	Total uint64
}

// Forwards returns the forwards being served, by listening address. Safe
// for concurrent use.
func (c *Client) Forwards() []ForwardInfo {
	c.fwdMu.Lock()
	out := make([]ForwardInfo, 0, len(c.fwds))
	for f, st := range c.fwds {
		out = append(out, ForwardInfo{Listen: f.Listen, Addr: st.addr, Route: f.Route, Open: st.open.Load(), Total: st.total.Load()})
	}
	c.fwdMu.Unlock()
	slices.SortFunc(out, func(a, b ForwardInfo) int { return cmp.Or(cmp.Compare(a.Addr, b.Addr), cmp.Compare(a.Route, b.Route)) })
	return out
}

// SessionInfo is the client's session to a server, as the admin status
// shows it.
type SessionInfo struct {
	Up       bool      // a session is up; the fields below are about it
	DownAt   time.Time // when !Up: when the last session went down (zero if none was ever up)
	ID       string    // the session_id of its log lines
	Server   string    // the address dialled
	Identity trust.Identity
	Since    time.Time
	Streams  int64 // open now
	// BytesOut went to the server and BytesIn came back, counted as the
	// copies run.
	BytesOut, BytesIn int64
}

// Session returns the state of the session to the server; in Raw mode,
// which keeps none, it reports Up false. Safe for concurrent use.
func (c *Client) Session() SessionInfo {
	if c.keeper == nil {
		return SessionInfo{}
	}
	k := c.keeper
	k.mu.Lock()
	s, down := k.cur, k.downAt
	k.mu.Unlock()
	if s == nil {
		return SessionInfo{DownAt: down}
	}
	return SessionInfo{Up: true, ID: s.id, Server: s.addr, Identity: s.identity, Since: s.since,
		Streams: s.streams.Load(), BytesOut: s.bytes.AToB.Load(), BytesIn: s.bytes.BToA.Load()}
}

// ErrNoSession is CloseSession's error for an id that is not the current
// session's.
var ErrNoSession = errors.New("client: the current session does not have that id")

// CloseSession closes the current session if its id is id, as an operator
// asked (tunnel status --close): it logs session_closing; session_closed
// follows with reason admin_close, and the keeper dials again at once. It
// returns ErrNoSession otherwise. Safe for concurrent use.
func (c *Client) CloseSession(id string) error {
	if c.keeper == nil {
		return ErrNoSession
	}
	s := c.keeper.current()
	if s == nil || s.id != id {
		return ErrNoSession
	}
	reason := audit.ReasonAdminClose
	s.reason.Store(&reason)
	s.log.WithFields(logrus.Fields{audit.Event: audit.SessionClosing, audit.Reason: reason}).
		Warn("closing session: an operator asked for it; redialling")
	s.Close()
	return nil
}
