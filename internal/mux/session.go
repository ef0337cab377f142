package mux

import (
	"errors"
	"net"
	"time"

	"github.com/hashicorp/yamux"
)

// Session is a yamux session over a connection, behind the frame guard:
// every frame header the peer sends is checked as it passes, the streams it
// opens are admitted under Options.MaxStreams, StreamRate and Budget, and
// each stream's receive window is sized from the round trip and what the
// stream's reader takes, within the budget. yamux opens, accepts and ends
// streams and keeps the session alive; their data bypasses it: the guard
// reads data frames into each stream's own buffer and a Stream writes its
// frames to the connection itself, so a byte is copied once fewer each way
// and no write waits on yamux's send goroutine. Safe for concurrent use.
type Session struct {
	y *yamux.Session
	g *guard
}

// Server starts a server session on conn: the peer opens odd-numbered
// streams. The session owns conn and closes it when it ends.
func Server(conn net.Conn, o Options) (*Session, error) { return start(conn, o, true) }

// Client starts a client session on conn. The session owns conn and closes
// it when it ends.
func Client(conn net.Conn, o Options) (*Session, error) { return start(conn, o, false) }

func start(conn net.Conn, o Options, server bool) (*Session, error) {
	opt, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	g := newGuard(conn, opt, server)
	g.start()
	var y *yamux.Session
	if server {
		y, err = yamux.Server(g, opt.yamuxConfig())
	} else {
		y, err = yamux.Client(g, opt.yamuxConfig())
	}
	if err != nil { // only a bad yamux.Config, which is ours
		g.Close()
		return nil, err
	}
	return &Session{y: y, g: g}, nil
}

// Open opens a stream to the peer.
func (s *Session) Open() (*Stream, error) {
	y, err := s.y.OpenStream()
	if err != nil {
		return nil, s.cause(err)
	}
	return &Stream{y: y, g: s.g}, nil
}

// Accept waits for the next stream the peer opened and the guard admitted.
// Once the session has ended it returns the reason: a *ViolationError (use
// errors.As) if the guard ended it.
func (s *Session) Accept() (*Stream, error) {
	y, err := s.y.AcceptStream()
	if err != nil {
		return nil, s.cause(err)
	}
	return &Stream{y: y, g: s.g}, nil
}

// cause returns the guard's violation if that is what ended the session,
// wrapped with err, or err.
func (s *Session) cause(err error) error {
	if v := s.Violation(); v != nil && !errors.Is(err, v) {
		return errors.Join(err, v)
	}
	return err
}

// Violation returns the protocol violation that ended the session, or nil.
func (s *Session) Violation() *ViolationError {
	return s.g.ended.Load()
}

// GoAway tells the peer to open no more streams; open ones go on.
func (s *Session) GoAway() error { return s.y.GoAway() }

// Close ends the session and every stream on it, and closes the connection.
func (s *Session) Close() error { return s.y.Close() }

// IsClosed reports whether the session has ended.
func (s *Session) IsClosed() bool { return s.y.IsClosed() }

// CloseChan is closed when the session ends.
func (s *Session) CloseChan() <-chan struct{} { return s.y.CloseChan() }

// Ping sends a ping and returns the round trip.
func (s *Session) Ping() (time.Duration, error) { return s.y.Ping() }

// NumStreams returns the number of streams yamux holds open.
func (s *Session) NumStreams() int { return s.y.NumStreams() }

// LocalAddr and RemoteAddr are the connection's addresses.
func (s *Session) LocalAddr() net.Addr  { return s.y.LocalAddr() }
func (s *Session) RemoteAddr() net.Addr { return s.y.RemoteAddr() }

// Budget returns the session's memory budget.
func (s *Session) Budget() *Budget { return s.g.budget }

// RTT returns the least round trip the guard measured recently (its own
// ping at the start, then the keepalives'), or 0 before the first.
func (s *Session) RTT() time.Duration {
	s.g.mu.Lock()
	defer s.g.mu.Unlock()
	return s.g.rtt
}
