package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
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
	"github.com/tunnel-dev/tunnel/trust"
)

// ErrSessionUnavailable is returned by SessionKeeper.Session when no
// session came up before the caller's context ended.
var ErrSessionUnavailable = errors.New("client: no session to the server")

// SessionKeeper keeps one mTLS + yamux session to the server up: it dials,
// redials with exponential backoff and full jitter when the session ends,
// and hands the current session to whoever asks. Safe for concurrent use.
type SessionKeeper struct {
	cfg     Config
	log     *logrus.Entry
	servers *rotation   // the Client's: Server and Failover, and the one to dial first
	memory  *mux.Budget // the Client's: under it, each session's stream buffers

	// onUp and onDown, if set, are told when a session becomes the one
	// handed out and when it stops being it; set before Run.
	onUp   func(*kept)
	onDown func(*mux.Session)

	mu      sync.Mutex
	cur     *kept         // the session to open streams on; nil while down; guarded by mu
	upCh    chan struct{} // closed when cur is set; replaced when it is cleared; guarded by mu
	retired chan struct{} // closed to make Run drop cur and redial; guarded by mu
	downAt  time.Time     // when the last session went down (zero: none went down yet); guarded by mu

	opened atomic.Uint64 // sessions established; all but the first are reconnects
	alive  alive.Signal  // Run's loop; Client.Alive reads it
}

// kept is a session the keeper dialled, with what the logs and the admin
// status say of it.
type kept struct {
	*mux.Session
	id       string // audit.NewSessionID
	addr     string // the server's address, as dialled
	identity trust.Identity
	since    time.Time
	log      *logrus.Entry          // carries the identity, addr and session_id fields
	bytes    pipe.Counters          // AToB towards the server, BToA back, as the copies run
	streams  atomic.Int64           // open on it now
	reason   atomic.Pointer[string] // the session_closed reason the client chose (admin_close), if any
}

// closeReason is the reason the client chose to close s, or "".
func (s *kept) closeReason() string {
	if r := s.reason.Load(); r != nil {
		return *r
	}
	return ""
}

// Keeper loop liveness: Run wakes every keeperTick while it waits and
// promises its next beat within keeperWithin of a wait, or within
// DialTimeout and keeperWithin of a dial.
const (
	keeperTick   = time.Second
	keeperWithin = 5 * time.Second
)

func newSessionKeeper(cfg Config, servers *rotation, memory *mux.Budget) *SessionKeeper {
	return &SessionKeeper{cfg: cfg, log: cfg.Log, servers: servers, memory: memory, upCh: make(chan struct{}),
		alive: alive.Signal{Name: "session keeper"}}
}

// up reports whether a session is published.
func (k *SessionKeeper) up() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cur != nil
}

// rotation is the list of servers to fail over between and the one that
// answered last, which is dialled first. Safe for concurrent use.
type rotation struct {
	addrs []string     // read-only; at least one
	cur   atomic.Int64 // index into addrs of the server that answered last
}

func newRotation(addrs []string) *rotation { return &rotation{addrs: addrs} }

// first returns the index of the server that answered last.
func (r *rotation) first() int { return int(r.cur.Load()) }

// pick returns the index and address of the server to dial after failed
// consecutive failures that began at server start: start first, then the
// next ones in turn.
func (r *rotation) pick(start, failed int) (int, string) {
	i := (start + failed) % len(r.addrs)
	return i, r.addrs[i]
}

// good records that server i answered.
func (r *rotation) good(i int) { r.cur.Store(int64(i)) }

// roundOver reports whether failed consecutive failures have tried every
// server once more, which is when the caller should back off.
func (r *rotation) roundOver(failed int) bool { return failed%len(r.addrs) == 0 }

// Session returns the current session, waiting for one until ctx ends.
func (k *SessionKeeper) Session(ctx context.Context) (*mux.Session, error) {
	s, err := k.session(ctx)
	if err != nil {
		return nil, err
	}
	return s.Session, nil
}

// current returns the published session, or nil.
func (k *SessionKeeper) current() *kept {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cur
}

// session is Session with what the keeper knows of the session.
func (k *SessionKeeper) session(ctx context.Context) (*kept, error) {
	for {
		k.mu.Lock()
		cur, up := k.cur, k.upCh
		k.mu.Unlock()
		if cur != nil && !cur.IsClosed() {
			return cur, nil
		}
		select {
		case <-up:
		case <-ctx.Done():
			return nil, ErrSessionUnavailable
		}
	}
}

// Retire stops handing out s (the server sent GoAway, or opening a stream
// failed) and makes Run redial. Streams already open on s go on.
func (k *SessionKeeper) Retire(s *mux.Session) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cur != nil && k.cur.Session == s && k.retired != nil {
		close(k.retired)
		k.retired = nil
	}
}

// Run keeps a session up until ctx ends, then closes it. It returns when
// the last session it dialled is closed.
func (k *SessionKeeper) Run(ctx context.Context) {
	var retired []*kept // still carrying streams after a GoAway
	defer func() {
		for _, s := range retired {
			s.Close()
		}
	}()
	defer k.alive.Stop()
	tick := time.NewTicker(keeperTick)
	defer tick.Stop()
	attempt := 0 // rounds of the server list that failed, for the backoff
	failed := 0  // dials that failed in a row: the next server is tried at once
	for ctx.Err() == nil {
		i, addr := k.servers.pick(k.servers.first(), failed) // only Run calls good
		k.alive.Beat(k.cfg.DialTimeout + keeperWithin)
		s, err := k.dial(ctx, addr)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failed++
			var delay time.Duration
			if k.servers.roundOver(failed) {
				delay = k.backoff(attempt)
				attempt++
			}
			k.log.WithFields(logrus.Fields{
				audit.Event: audit.SessionFailed, audit.Reason: dialReason(err), audit.Addr: addr,
				audit.Error: err.Error(), "retry_in_ms": delay.Milliseconds(),
			}).Warn("cannot reach the server")
			k.wait(ctx, tick, time.After(delay), nil, nil)
			continue
		}
		k.servers.good(i)
		attempt, failed = 0, 0
		retire := k.publish(s)
		if k.onUp != nil {
			k.onUp(s)
		}
		k.wait(ctx, tick, nil, s.CloseChan(), retire)
		k.unpublish(s)
		if k.onDown != nil {
			k.onDown(s.Session)
		}
		if !s.IsClosed() && ctx.Err() == nil {
			retired = append(retired, s) // drains by itself; closed at the end
			s.log.WithField(audit.Event, audit.SessionClosed).WithField(audit.Reason, "retired").
				Info("server asked to go away; redialling")
		} else {
			s.Close()
			fields := logrus.Fields{
				audit.Event:      audit.SessionClosed,
				audit.DurationMS: time.Since(s.since).Milliseconds(),
				audit.BytesIn:    s.bytes.AToB.Load(), audit.BytesOut: s.bytes.BToA.Load(),
			}
			if v := s.Violation(); v != nil {
				s.log.WithFields(logrus.Fields{audit.Event: audit.ProtocolViolation, audit.Kind: v.Kind, audit.Error: v.Detail}).
					Error("closing session: the server broke the yamux protocol or a session bound")
				fields[audit.Reason] = audit.ProtocolViolation
				fields[audit.Kind] = v.Kind
			} else if r := s.closeReason(); r != "" {
				fields[audit.Reason] = r
			}
			s.log.WithFields(fields).Info("session closed")
		}
		retired = pruneClosed(retired)
	}
}

// wait blocks until timer fires, a or b is closed, or ctx ends (a nil
// channel never fires), beating every tick meanwhile: a keeper that waits
// is alive.
func (k *SessionKeeper) wait(ctx context.Context, tick *time.Ticker, timer <-chan time.Time, a, b <-chan struct{}) {
	for {
		k.alive.Beat(keeperTick + keeperWithin)
		select {
		case <-timer:
			return
		case <-a:
			return
		case <-b:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func pruneClosed(ss []*kept) []*kept {
	out := ss[:0]
	for _, s := range ss {
		if !s.IsClosed() {
			out = append(out, s)
		}
	}
	return out
}

func (k *SessionKeeper) publish(s *kept) <-chan struct{} {
	k.opened.Add(1)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.cur = s
	k.retired = make(chan struct{})
	close(k.upCh)
	return k.retired
}

func (k *SessionKeeper) unpublish(s *kept) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cur == s {
		k.downAt = time.Now()
		k.cur = nil
		k.retired = nil
		k.upCh = make(chan struct{})
	}
}

// backoff returns the delay before redial attempt n (0-based): uniform in
// [0, min(BackoffMax, BackoffMin*2^n)] ("full jitter"), so that many
// clients cut off together do not come back together.
func (k *SessionKeeper) backoff(n int) time.Duration {
	ceil := k.cfg.BackoffMax
	if n < 30 {
		ceil = min(k.cfg.BackoffMin<<n, k.cfg.BackoffMax)
	}
	return rand.N(ceil) + 1
}

// dial connects to addr, completes TLS and starts a yamux client session.
func (k *SessionKeeper) dial(ctx context.Context, addr string) (*kept, error) {
	dctx, cancel := context.WithTimeout(ctx, k.cfg.DialTimeout)
	defer cancel()
	tc, err := dialTLS(dctx, k.cfg, addr)
	if err != nil {
		return nil, err
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != trust.ALPNTunnel {
		tc.Close()
		return nil, fmt.Errorf("client: server did not negotiate ALPN %q (got %q)", trust.ALPNTunnel, cs.NegotiatedProtocol)
	}
	id, _ := trust.PeerIdentity(cs)
	sid := audit.NewSessionID()
	log := k.log.WithFields(id.Fields()).WithFields(logrus.Fields{audit.Addr: addr, audit.SessionID: sid})
	rc := &readErrConn{Conn: tc}
	// The server opens streams toward us only for what we publish
	// (publish.go), at most PublishMaxStreams at once: one past it is
	// refused with the over-limit status before its data is buffered.
	s, err := mux.Client(rc, mux.Options{
		Log: log, Keepalive: k.cfg.Keepalive, Timeout: k.cfg.KeepaliveTimeout,
		MaxStreams: k.cfg.PublishMaxStreams, Refusal: []byte{byte(wire.StatusOverLimit)},
		Budget: mux.NewBudget(mux.DefaultSessionBudget, k.memory),
	})
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("client: yamux: %w", err)
	}
	// In TLS 1.3 our handshake completes before the server has checked our
	// certificate; its verdict arrives with the first read. One ping round
	// trip proves the server accepted us before the session is used.
	if err := ping(dctx, s); err != nil {
		s.Close()
		if rerr := rc.err(); rerr != nil {
			return nil, &handshakeError{rerr}
		}
		return nil, &handshakeError{err}
	}
	log.WithFields(logrus.Fields{audit.Event: audit.SessionOpened, "tls_version": tls.VersionName(cs.Version)}).
		Info("session opened")
	return &kept{Session: s, id: sid, addr: addr, identity: id, since: time.Now(), log: log}, nil
}

// dialTLS dials addr from cfg.Source and completes the TLS handshake under
// ctx. A TLS config without a ServerName gets the host of addr. A failed
// handshake is a *handshakeError.
func dialTLS(ctx context.Context, cfg Config, addr string) (*tls.Conn, error) {
	d := net.Dialer{KeepAliveConfig: tcpKeepAlive}
	if cfg.Source.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: cfg.Source.AsSlice()}
	}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tcfg := cfg.TLS()
	if tcfg.ServerName == "" {
		tcfg.ServerName, _, _ = net.SplitHostPort(addr)
	}
	tc := tls.Client(mux.NewTransport(raw), tcfg) // batched TLS records (internal/mux)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, &handshakeError{err}
	}
	return tc, nil
}

// ping runs one yamux ping, bounded by ctx.
func ping(ctx context.Context, s *mux.Session) error {
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	_, err := s.Ping()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// readErrConn remembers the first read error of a connection: yamux ends a
// session on it and reports only that the session shut down, and the first
// read error is the server's TLS alert when it refused our certificate.
type readErrConn struct {
	net.Conn
	mu      sync.Mutex
	readErr error // guarded by mu
}

func (c *readErrConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if ne, ok := errors.AsType[net.Error](err); err != nil && !(ok && ne.Timeout()) { // the frame guard's wake-ups are timeouts

		c.mu.Lock()
		if c.readErr == nil {
			c.readErr = err
		}
		c.mu.Unlock()
	}
	return n, err
}

// NetConn returns the wrapped connection, so mux.Client finds the
// Transport under its TLS.
func (c *readErrConn) NetConn() net.Conn { return c.Conn }

func (c *readErrConn) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

// handshakeError marks a failure of the TLS handshake, as opposed to TCP.
type handshakeError struct{ err error }

func (e *handshakeError) Error() string { return "client: TLS handshake: " + e.err.Error() }
func (e *handshakeError) Unwrap() error { return e.err }

func dialReason(err error) string {
	var he *handshakeError
	if errors.As(err, &he) {
		if errors.Is(err, context.DeadlineExceeded) {
			return "handshake_timeout"
		}
		return "handshake_" + trust.FailureReason(he.err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "dial_timeout"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return "dial_failed"
	}
	return "error"
}
