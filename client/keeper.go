package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/trust"
)

// ErrSessionUnavailable is returned by SessionKeeper.Session when no
// session came up before the caller's context ended.
var ErrSessionUnavailable = errors.New("client: no session to the server")

// SessionKeeper keeps one mTLS + yamux session to the server up: it dials,
// redials with exponential backoff and full jitter when the session ends,
// and hands the current session to whoever asks. Safe for concurrent use.
type SessionKeeper struct {
	cfg Config
	log *logrus.Entry

	mu      sync.Mutex
	cur     *yamux.Session // the session to open streams on; nil while down; guarded by mu
	up      chan struct{}  // closed when cur is set; replaced when it is cleared; guarded by mu
	retired chan struct{}  // closed to make Run drop cur and redial; guarded by mu
}

func newSessionKeeper(cfg Config) *SessionKeeper {
	return &SessionKeeper{cfg: cfg, log: cfg.Log, up: make(chan struct{})}
}

// Session returns the current session, waiting for one until ctx ends.
func (k *SessionKeeper) Session(ctx context.Context) (*yamux.Session, error) {
	for {
		k.mu.Lock()
		cur, up := k.cur, k.up
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
func (k *SessionKeeper) Retire(s *yamux.Session) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cur == s && k.retired != nil {
		close(k.retired)
		k.retired = nil
	}
}

// Run keeps a session up until ctx ends, then closes it. It returns when
// the last session it dialled is closed.
func (k *SessionKeeper) Run(ctx context.Context) {
	var retired []*yamux.Session // still carrying streams after a GoAway
	defer func() {
		for _, s := range retired {
			s.Close()
		}
	}()
	attempt := 0
	for ctx.Err() == nil {
		s, err := k.dial(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			delay := k.backoff(attempt)
			attempt++
			k.log.WithFields(logrus.Fields{
				audit.Event: audit.SessionFailed, audit.Reason: dialReason(err), audit.Addr: k.cfg.Server,
				audit.Error: err.Error(), "retry_in_ms": delay.Milliseconds(),
			}).Warn("cannot reach the server")
			select {
			case <-time.After(delay):
			case <-ctx.Done():
			}
			continue
		}
		attempt = 0
		retire := k.publish(s)
		start := time.Now()
		select {
		case <-s.CloseChan():
		case <-retire:
		case <-ctx.Done():
		}
		k.unpublish(s)
		if !s.IsClosed() && ctx.Err() == nil {
			retired = append(retired, s) // drains by itself; closed at the end
			k.log.WithField(audit.Event, audit.SessionClosed).WithField(audit.Reason, "retired").
				Info("server asked to go away; redialling")
		} else {
			s.Close()
			k.log.WithFields(logrus.Fields{
				audit.Event: audit.SessionClosed, audit.Addr: k.cfg.Server,
				audit.DurationMS: time.Since(start).Milliseconds(),
			}).Info("session closed")
		}
		retired = pruneClosed(retired)
	}
}

func pruneClosed(ss []*yamux.Session) []*yamux.Session {
	out := ss[:0]
	for _, s := range ss {
		if !s.IsClosed() {
			out = append(out, s)
		}
	}
	return out
}

func (k *SessionKeeper) publish(s *yamux.Session) <-chan struct{} {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.cur = s
	k.retired = make(chan struct{})
	close(k.up)
	return k.retired
}

func (k *SessionKeeper) unpublish(s *yamux.Session) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cur == s {
		k.cur = nil
		k.retired = nil
		k.up = make(chan struct{})
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

// dial connects, completes TLS and starts a yamux client session.
func (k *SessionKeeper) dial(ctx context.Context) (*yamux.Session, error) {
	dctx, cancel := context.WithTimeout(ctx, k.cfg.DialTimeout)
	defer cancel()
	d := net.Dialer{KeepAliveConfig: tcpKeepAlive}
	raw, err := d.DialContext(dctx, "tcp", k.cfg.Server)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, k.cfg.TLS())
	if err := tc.HandshakeContext(dctx); err != nil {
		raw.Close()
		return nil, &handshakeError{err}
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != trust.ALPNTunnel {
		tc.Close()
		return nil, fmt.Errorf("client: server did not negotiate ALPN %q (got %q)", trust.ALPNTunnel, cs.NegotiatedProtocol)
	}
	id, _ := trust.PeerIdentity(cs)
	log := k.log.WithFields(id.Fields()).WithField(audit.Addr, k.cfg.Server)
	rc := &readErrConn{Conn: tc}
	s, err := yamux.Client(rc, mux.Config(log, k.cfg.Keepalive, k.cfg.KeepaliveTimeout))
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
	return s, nil
}

// ping runs one yamux ping, bounded by ctx.
func ping(ctx context.Context, s *yamux.Session) error {
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
	if err != nil {
		c.mu.Lock()
		if c.readErr == nil {
			c.readErr = err
		}
		c.mu.Unlock()
	}
	return n, err
}

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
