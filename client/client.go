// Package client is the tunnel's client role: it keeps a session to the
// server up and turns connections to local forward ports into streams.
package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/alive"
	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/internal/pipe"
	"github.com/tunnel-dev/tunnel/internal/wire"
)

// ListenError reports a forward whose local address could not be bound.
type ListenError struct {
	Forward Forward
	Err     error
}

func (e *ListenError) Error() string {
	return fmt.Sprintf("client: forward %s=%s: cannot listen: %v", e.Forward.Listen, e.Forward.Route, e.Err)
}

func (e *ListenError) Unwrap() error { return e.Err }

// Client is the client role. Create it with New; Run it once, from one
// goroutine (Listen first if wanted).
type Client struct {
	cfg     Config
	log     *logrus.Entry
	servers *rotation      // Server and Failover, and the one to dial first
	memory  *mux.Budget    // the stream buffers of every session and raw connection
	keeper  *SessionKeeper // nil in Raw mode, which dials per local connection
	pubs    *publisher     // the publications, kept live on the keeper's sessions
	lns     []net.Listener // bound by Listen, one per forward; closed by Run's serveForward

	updates chan forwardUpdate // SetForwards -> Run

	fwdMu sync.Mutex
	fwds  map[Forward]*forwardState // the forwards being served; made lazily; guarded by fwdMu
	alive alive.Signal              // Run's loop; Alive reads it

	streamsActive atomic.Int64
	streamsTotal  atomic.Uint64
	streamsFailed atomic.Uint64
}

// New checks cfg and returns a Client. It opens nothing.
func New(cfg Config) (*Client, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, log: cfg.Log, servers: newRotation(cfg.servers()),
		memory: mux.NewBudget(mux.DefaultProcessBudget, nil), updates: make(chan forwardUpdate),
		alive: alive.Signal{Name: "client loop"}}
	if !cfg.Raw {
		c.keeper = newSessionKeeper(cfg, c.servers, c.memory)
	}
	c.pubs = newPublisher(c, cfg.Publish)
	return c, nil
}

// Listen binds every forward's local address. If one cannot be bound it
// closes the others and returns a *ListenError. Call it before Run to learn
// about a taken port before anything else happens; Run calls it if needed.
func (c *Client) Listen(ctx context.Context) error {
	if c.lns != nil {
		return nil
	}
	lns, err := bindForwards(ctx, c.cfg.Forwards)
	if err != nil {
		return err
	}
	c.lns = lns
	return nil
}

// Run binds the forwards (see Listen), then keeps the session up and serves
// local connections until ctx ends. When ctx ends it closes the listeners
// and the session, waits for its goroutines and returns nil.
func (c *Client) Run(ctx context.Context) error {
	if err := c.Listen(ctx); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	if c.keeper != nil { // raw mode dials per local connection, see raw.go
		c.keeper.onUp = func(ks *kept) { c.pubs.attach(ctx, ks, &wg) }
		c.keeper.onDown = c.pubs.detach
		wg.Go(func() { c.keeper.Run(ctx) })
	}
	var fs forwardSet // the live listeners; SetForwards changes them through Run
	for i, ln := range c.lns {
		fs.start(ctx, c, c.cfg.Forwards[i], ln, &wg)
	}
	defer c.alive.Stop()
	tick := time.NewTicker(keeperTick)
	defer tick.Stop()
	for {
		c.alive.Beat(keeperTick + keeperWithin)
		select {
		case <-ctx.Done():
			return nil
		case u := <-c.updates:
			u.done <- fs.apply(ctx, c, u.fwds, &wg)
		case <-tick.C:
		}
	}
}

// Alive returns nil while Run's loop and the session keeper (the loop
// that dials and redials) keep turning, or why not; before Run, and after
// it returned, it is an error. For the systemd watchdog; safe for
// concurrent use.
func (c *Client) Alive() error {
	now := time.Now()
	if err := c.alive.Check(now); err != nil {
		return err
	}
	if c.keeper != nil {
		return c.keeper.alive.Check(now)
	}
	return nil
}

// serveForward accepts local connections on ln until ctx ends, then closes ln.
func (c *Client) serveForward(ctx context.Context, ln net.Listener, f Forward, wg *sync.WaitGroup) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	fst := c.trackForward(f, ln.Addr().String())
	defer c.untrackForward(f, fst)
	var backoff time.Duration
	for {
		lc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			c.log.WithError(err).Errorf("accept on %s failed; retrying in %v", ln.Addr(), backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			continue
		}
		backoff = 0
		wg.Go(func() { c.serveLocal(ctx, lc, f, fst) })
	}
}

// serveLocal carries one local connection over a new stream. It closes lc.
func (c *Client) serveLocal(ctx context.Context, lc net.Conn, f Forward, fst *forwardState) {
	fst.total.Add(1)
	fst.open.Add(1)
	defer fst.open.Add(-1)
	if c.cfg.Raw {
		c.serveRaw(ctx, lc, f)
		return
	}
	defer lc.Close()
	c.streamsTotal.Add(1)
	c.streamsActive.Add(1)
	defer c.streamsActive.Add(-1)
	log := c.log.WithFields(logrus.Fields{audit.Route: f.Route, audit.Addr: lc.RemoteAddr().String(), audit.Direction: audit.DirectionForward})

	st, ks, err := c.openStream(ctx, f.Route)
	if err != nil {
		c.streamsFailed.Add(1)
		log.WithFields(logrus.Fields{audit.Event: audit.StreamRefused, audit.Reason: "session_unavailable", audit.Error: err.Error()}).
			Warn("closing local connection: no session to the server")
		return
	}
	log = log.WithField(audit.SessionID, ks.id)
	ks.streams.Add(1)
	defer ks.streams.Add(-1)
	// Copy at once: the local side's first bytes follow the header without
	// waiting for the status, which the first read from the stream checks.
	start := time.Now()
	out, in, err := pipe.Run(lc, &statusConn{Stream: st}, pipe.Options{Idle: c.cfg.IdleTimeout, Memory: c.memory, Count: &ks.bytes})
	if se, ok := errors.AsType[*wire.StatusError](err); ok {
		c.streamsFailed.Add(1)
		log.WithFields(logrus.Fields{audit.Event: audit.StreamRefused, audit.Status: se.Code.String()}).
			Warn("server refused the stream: " + se.Code.String())
		return
	}
	log.WithFields(audit.StreamClosedFields(out, in, start, err)).Info("stream closed")
}

// openStream opens a stream on the current session and writes its header;
// it returns the stream and the session it is on. A session that the
// server asked to go away is retired and another is waited for, within
// ConnectTimeout in all.
func (c *Client) openStream(ctx context.Context, route string) (*mux.Stream, *kept, error) {
	hdr, err := wire.AppendHeader(nil, route)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
	defer cancel()
	for {
		s, err := c.keeper.session(ctx)
		if err != nil {
			return nil, nil, err
		}
		st, err := s.Open()
		if err != nil {
			if goingAway(err) {
				c.keeper.Retire(s.Session)
				continue
			}
			return nil, nil, err
		}
		st.SetWriteDeadline(time.Now().Add(c.cfg.ConnectTimeout))
		_, err = st.Write(hdr)
		st.SetWriteDeadline(time.Time{})
		if err != nil {
			st.Close()
			return nil, nil, fmt.Errorf("client: writing stream header: %w", err)
		}
		return st, s, nil
	}
}

// statusConn is a stream whose first Read first consumes and checks the
// server's status byte, so the copy loop can start before the status comes.
type statusConn struct {
	*mux.Stream
	checked bool // only the one goroutine reading the stream touches it
}

func (s *statusConn) Read(p []byte) (int, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	return s.Stream.Read(p)
}

// Lend is the stream's Lend after the status check, for the copy loop
// (pipe.Lender).
func (s *statusConn) Lend(max int) ([]byte, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	return s.Stream.Lend(max)
}

func (s *statusConn) check() error {
	if s.checked {
		return nil
	}
	if err := wire.ReadStatus(s.Stream); err != nil {
		return err
	}
	s.checked = true
	return nil
}

// Stats is a snapshot of the client's counters.
type Stats struct {
	SessionUp     bool // a session to a server is up (never in Raw mode)
	StreamsActive int64
	StreamsTotal  uint64
	StreamsFailed uint64
	// Reconnects are the sessions established after the first: each
	// time the session came back after it ended or was retired.
	Reconnects uint64
	// Publications are the state and counters of each publication (reverse
	// tunnels), by name.
	Publications map[string]PublicationStats
}

// Stats returns a snapshot of the counters; safe for concurrent use.
func (c *Client) Stats() Stats {
	st := Stats{
		SessionUp: c.keeper != nil && c.keeper.up(), StreamsActive: c.streamsActive.Load(),
		StreamsTotal: c.streamsTotal.Load(), StreamsFailed: c.streamsFailed.Load(),
		Publications: c.pubs.stats(),
	}
	if c.keeper != nil {
		if n := c.keeper.opened.Load(); n > 1 {
			st.Reconnects = n - 1
		}
	}
	return st
}
