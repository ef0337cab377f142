// Package server is the tunnel's server role: it accepts TCP, filters peers by
// address, completes mutual TLS and serves yamux streams to named backends.
package server

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/alive"
	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/logthrottle"
	"github.com/tunnel-dev/tunnel/internal/mux"
)

// ErrShutdownForced is returned by Serve when streams were still open at the
// end of the shutdown timeout and were cut.
var ErrShutdownForced = errors.New("server: shutdown timeout: open streams were closed")

// Server serves tunnel clients. Create it with New; it is safe for
// concurrent use, and Serve may be called once.
type Server struct {
	cfg     Config
	log     *logrus.Entry
	policy  atomic.Pointer[policy] // routes and rules; replaced whole by Reload
	exposes map[string]*expose     // Config.Exposes at run time; read-only after New
	pubs    publications           // live publications of the exposes' names
	slots   *slotSet               // handshakes in flight
	pending *pendingSet            // connections in their prologue

	mu         sync.Mutex
	sessions   map[*session]struct{} // guarded by mu
	raws       map[*rawConn]struct{} // plain TLS clients on the raw route; made lazily; guarded by mu
	identities map[string]int        // yamux sessions per identity fingerprint; guarded by mu

	failLog   *logthrottle.Throttle[failKey] // handshake_failed lines
	rejectLog *logthrottle.Throttle[failKey] // conn_rejected lines after the handshake
	memory    *mux.Budget                    // all sessions' stream buffers; each session's Budget is under it

	activeStreams atomic.Int64
	stats         counters
	alive         alive.Signal // the accept loop's; Alive reads it
}

// New checks cfg, fills in its defaults and returns a Server. It starts no
// goroutine and opens nothing. Errors are *FieldError.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	p, err := newPolicy(cfg.Routes, cfg.RawRoute, cfg.Exposes)
	if err != nil {
		return nil, err
	}
	exposes, err := newExposes(cfg)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:        cfg,
		log:        cfg.Log,
		slots:      &slotSet{max: cfg.MaxHandshakes},
		pending:    &pendingSet{max: cfg.MaxPending},
		sessions:   make(map[*session]struct{}),
		identities: make(map[string]int),
		failLog:    &logthrottle.Throttle[failKey]{Interval: failLogInterval, Max: failLogKeys},
		rejectLog:  &logthrottle.Throttle[failKey]{Interval: failLogInterval, Max: failLogKeys},
		memory:     mux.NewBudget(cfg.MemoryBudget, nil),
		alive:      alive.Signal{Name: "accept loop"},
		exposes:    exposes,
	}
	s.stats.violations = make(map[string]*atomic.Uint64, len(mux.ViolationKinds))
	for _, k := range mux.ViolationKinds {
		s.stats.violations[k] = new(atomic.Uint64)
	}
	s.policy.Store(p)
	if rc := cfg.Revocation; rc != nil {
		// A CRL that changed (fetched, or a CRL file reloaded) closes the
		// live sessions whose chain it now revokes.
		rc.OnUpdate(func() { s.Recheck(audit.SessionRevoked, RevocationCheck(rc)) })
	}
	return s, nil
}

// Serve accepts connections on ln until ctx is done, then shuts down
// gracefully: it closes ln, tells every session to open no new stream
// (yamux GoAway), waits up to ShutdownTimeout for open streams to finish, closes
// what remains and returns once every goroutine it started has ended. It
// returns nil after a clean drain, ErrShutdownForced if streams were cut,
// or the listener's error if accepting failed for good. Serve closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	wake, _ := ln.(deadliner) // the socket itself: the wrappers below hide its SetDeadline
	ln = s.listen(ln)         // the address filter; PROXY-protocol upstreams pass to admit
	s.log.WithFields(logrus.Fields{audit.Event: audit.ListenerStarted, audit.Listen: ln.Addr().String()}).
		Info("server listening")

	// hard outlives ctx: it carries the sessions and streams that may still
	// finish during the drain, and is cancelled when the drain is over.
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()

	var wg sync.WaitGroup
	acceptErr := make(chan error, 1)
	wg.Go(func() { acceptErr <- s.acceptLoop(ctx, hard, ln, wake, &wg) })

	var err error
	select {
	case <-ctx.Done():
	case err = <-acceptErr:
	}
	ln.Close()
	s.pending.shutdown() // nothing waits for a first byte past Serve
	s.log.WithFields(logrus.Fields{audit.Event: audit.ServerStopping, "open_streams": s.activeStreams.Load()}).
		Info("server stopping: no new connections or streams")
	if !s.drain(s.cfg.ShutdownTimeout) {
		err = errors.Join(err, ErrShutdownForced)
	}
	cancelHard()
	s.closeSessions()
	wg.Wait()
	return err
}

// drain waits until no stream is open or d has passed, and reports whether
// the drain was clean. Sessions were told to go away first.
func (s *Server) drain(d time.Duration) bool {
	s.mu.Lock()
	for ss := range s.sessions {
		s.goAway(ss, "shutdown")
	}
	s.mu.Unlock()
	deadline := time.Now().Add(d)
	for s.activeStreams.Load() > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond) // poll, as http.Server.Shutdown does
	}
	return true
}

func (s *Server) closeSessions() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ss := range s.sessions {
		ss.mux.Close()
	}
}

func (s *Server) track(ss *session) {
	s.mu.Lock()
	s.sessions[ss] = struct{}{}
	s.mu.Unlock()
}

func (s *Server) untrack(ss *session) {
	s.mu.Lock()
	delete(s.sessions, ss)
	s.mu.Unlock()
}
