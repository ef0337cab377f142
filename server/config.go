package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/trust"
)

// Defaults for the zero values of Config's fields.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultFirstByteTimeout and DefaultClientHelloTimeout bound the
	// prologue: a TLS client sends its ClientHello with its first segment,
	// so even a lossy long path needs a fraction of these.
	DefaultFirstByteTimeout   = 5 * time.Second
	DefaultClientHelloTimeout = 5 * time.Second
	// DefaultMaxPending caps connections in their prologue. A silent one
	// costs about 6 KiB of server memory (docs/OPERATIONS.md), so the cap
	// is about 24 MiB, and a real client spends one round trip there:
	// only a flood of this many connections within one round trip could
	// evict one.
	DefaultMaxPending           = 4096
	DefaultDialTimeout          = 5 * time.Second
	DefaultHeaderTimeout        = 10 * time.Second
	DefaultShutdownTimeout      = 30 * time.Second
	DefaultKeepalive            = 15 * time.Second
	DefaultMaxStreamsPerSession = 1024
	// DefaultMaxSessionsPerIdentity bounds what one certificate can hold
	// open: generous for a fleet of replicas sharing a certificate, small
	// against a stolen one.
	DefaultMaxSessionsPerIdentity = 256
)

// DefaultMaxHandshakes is the default cap on TLS handshakes in flight: 128
// per CPU the process may use (256 on a 2-core machine). A handshake costs
// a signature and a key exchange; more in flight only adds latency.
func DefaultMaxHandshakes() int { return 128 * runtime.GOMAXPROCS(0) }

// Config configures a Server. It must not be modified after New. A
// negative duration or limit is an error; New reports each bad field as a
// *FieldError.
type Config struct {
	// Trust holds the TLS material handshakes use; Reload swaps it.
	// Required unless TLS is set.
	Trust *trust.Store

	// Revocation, if set, checks client chains for revocation on every
	// handshake (when TLS is nil); whenever its CRLs change it closes the
	// live sessions they now revoke, and Reload has it re-read the CRL
	// files. New registers itself with it (OnUpdate); the caller starts and
	// closes it.
	Revocation *trust.RevocationChecker

	// TLS is the server's TLS configuration. Nil means
	// trust.ServerConfig(Trust, [trust.ALPNTunnel],
	// trust.WithRevocation(Revocation)). A config set here must require and
	// verify client certificates, and read Trust if Reload is to change it.
	TLS *tls.Config

	// TrustOptions add checks and features to the default TLS config (when
	// TLS is nil), after WithRevocation: trust.WithStapler staples the
	// server's OCSP response. Nil adds nothing.
	TrustOptions []trust.ConfigOption

	// Filter admits or rejects peers by address before any byte is read;
	// required.
	Filter *netfilter.Filter

	// Routes are the named backends; names unique. A server needs at
	// least one route or one expose.
	Routes []Route

	// Exposes are the reverse tunnels: names that clients publish, whose
	// inbound connections ServeExpose carries to them; names unique and
	// none the name of a route. Each needs an allowlist and a publisher
	// rule.
	Exposes []Expose

	// FirstByteTimeout bounds the wait for a new connection's first byte
	// (after its PROXY header, if it comes from a trusted upstream). The
	// connection waits in the pending set, without a handshake slot; past
	// the deadline it is reset (conn_rejected, reason first_byte_timeout).
	// Zero means DefaultFirstByteTimeout; negative is an error.
	FirstByteTimeout time.Duration

	// ClientHelloTimeout bounds the wait for the rest of the ClientHello
	// once its first byte came, still without a handshake slot; past it the
	// connection is reset (conn_rejected, reason client_hello_timeout).
	// Zero means DefaultClientHelloTimeout; negative is an error.
	ClientHelloTimeout time.Duration

	// MaxPending caps the connections in their prologue: accepted and not
	// yet handshaking (waiting for a PROXY header, a first byte or the rest
	// of a ClientHello). A new connection never finds it full: it makes
	// room by resetting the oldest silent connection, or with none silent
	// the oldest with an unfinished ClientHello (conn_rejected, reason
	// pending_evicted). Zero means DefaultMaxPending; negative is an error.
	MaxPending int

	// HandshakeTimeout bounds the TLS handshake, from the complete
	// ClientHello on; zero means DefaultHandshakeTimeout, negative is an
	// error.
	HandshakeTimeout time.Duration

	// MaxHandshakes caps handshakes in flight. A connection takes a slot
	// once its whole ClientHello is in and holds it until the handshake
	// ends. When every slot is taken, a newcomer makes room by resetting
	// the oldest handshake waiting for its peer's next flight (reason
	// handshake_evicted); only when none is waiting, every one working,
	// is the newcomer reset (reason handshake_limit). Zero means
	// DefaultMaxHandshakes().
	MaxHandshakes int

	// DialTimeout bounds a backend dial; zero means DefaultDialTimeout.
	DialTimeout time.Duration

	// HeaderTimeout bounds reading a stream's header; zero means
	// DefaultHeaderTimeout.
	HeaderTimeout time.Duration

	// IdleTimeout ends a stream on which no byte moved either way for this
	// long; zero means no limit.
	IdleTimeout time.Duration

	// Keepalive is the yamux ping interval; zero means DefaultKeepalive.
	Keepalive time.Duration

	// MaxStreamsPerSession caps concurrent streams in one session; a stream
	// past it is answered StatusOverLimit. Zero means
	// DefaultMaxStreamsPerSession.
	MaxStreamsPerSession int

	// MaxSessionsPerIdentity caps the yamux sessions one client identity
	// (certificate fingerprint) holds at once; a session past it is closed
	// right after its handshake (conn_rejected, reason session_limit). Zero
	// means DefaultMaxSessionsPerIdentity.
	MaxSessionsPerIdentity int

	// StreamRate, if positive, caps stream opens per second in one session,
	// with a burst of MaxStreamsPerSession; a stream past it is answered
	// StatusOverLimit before its data is buffered. Zero means no rate limit:
	// the stream cap and the memory budgets bound what a session holds, and
	// a client opening connections as fast as the server can serve them
	// (a pool refilling, pgbench -C) is never refused.
	StreamRate int

	// SessionMemory bounds the bytes one session's streams hold received
	// and not yet taken by their backends; zero means
	// mux.DefaultSessionBudget (64 MiB), negative is an error. A stream
	// whose data would pass it is reset; new streams are refused while it
	// is three quarters full.
	SessionMemory int64

	// MemoryBudget bounds the same for all sessions together; zero means
	// mux.DefaultProcessBudget (256 MiB), negative is an error.
	MemoryBudget int64

	// MaxWindow is the ceiling of a stream's receive window, which grows
	// from 256 KiB while the stream's reader keeps up with a round trip
	// that needs it; zero means mux.DefaultMaxWindow (16 MiB).
	MaxWindow uint32

	// MaxSessionLifetime, if positive, ends a session gracefully after this
	// long: the server sends GoAway, the client opens its next streams on a
	// new session (with the certificates current then), and the old session
	// closes once its streams are done (or after ShutdownTimeout). Zero
	// means sessions live as long as their connection.
	MaxSessionLifetime time.Duration

	// ShutdownTimeout is how long Serve lets open streams finish once its
	// context is done; zero means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration

	// RawRoute names the route that a plain TLS client (one that offers no
	// ALPN: stunnel, openssl s_client, ghostunnel) gets as its one stream,
	// after the same allowlist, certificate and revocation checks as any
	// client. Empty: such a client is refused after the handshake
	// (conn_rejected, reason no_alpn). It must name one of Routes.
	RawRoute string

	// ProxyProtocolFrom are the trusted PROXY-protocol upstreams (load
	// balancers). A connection from one of these addresses must open with a
	// PROXY v1 or v2 header, read within ProxyHeaderTimeout, and the
	// allowlist, logs and per-route rules then see the client address from
	// the header. A PROXY header from any other address is not parsed: it is
	// the first bytes of a TLS handshake, which fails. Nil trusts nobody.
	ProxyProtocolFrom *netfilter.Allowlist

	// ProxyHeaderTimeout bounds reading a PROXY header from a trusted
	// upstream; zero means netfilter.DefaultProxyHeaderTimeout.
	ProxyHeaderTimeout time.Duration

	// Log receives the audit events; required.
	Log *logrus.Entry
}

// FieldError reports a bad value of a Config field: the field, as named in
// Config ("DialTimeout", "Routes"), and what is wrong with it.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return "server: Config." + e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// withDefaults checks c, except its routes (newPolicy checks those, for New
// and Reload alike), and returns a copy with zero values replaced by the
// defaults. Errors are *FieldError.
func (c Config) withDefaults() (Config, error) {
	required := errors.New("required")
	switch {
	case c.TLS == nil && c.Trust == nil:
		return c, &FieldError{"Trust", required}
	case c.Filter == nil:
		return c, &FieldError{"Filter", required}
	case c.Log == nil:
		return c, &FieldError{"Log", required}
	}
	for _, err := range []error{
		orDefault("FirstByteTimeout", &c.FirstByteTimeout, DefaultFirstByteTimeout),
		orDefault("ClientHelloTimeout", &c.ClientHelloTimeout, DefaultClientHelloTimeout),
		orDefault("MaxPending", &c.MaxPending, DefaultMaxPending),
		orDefault("HandshakeTimeout", &c.HandshakeTimeout, DefaultHandshakeTimeout),
		orDefault("MaxHandshakes", &c.MaxHandshakes, DefaultMaxHandshakes()),
		orDefault("DialTimeout", &c.DialTimeout, DefaultDialTimeout),
		orDefault("HeaderTimeout", &c.HeaderTimeout, DefaultHeaderTimeout),
		orDefault("IdleTimeout", &c.IdleTimeout, 0),
		orDefault("Keepalive", &c.Keepalive, DefaultKeepalive),
		orDefault("MaxStreamsPerSession", &c.MaxStreamsPerSession, DefaultMaxStreamsPerSession),
		orDefault("MaxSessionsPerIdentity", &c.MaxSessionsPerIdentity, DefaultMaxSessionsPerIdentity),
		orDefault("StreamRate", &c.StreamRate, 0),
		orDefault("SessionMemory", &c.SessionMemory, mux.DefaultSessionBudget),
		orDefault("MemoryBudget", &c.MemoryBudget, mux.DefaultProcessBudget),
		orDefault("MaxSessionLifetime", &c.MaxSessionLifetime, 0),
		orDefault("ShutdownTimeout", &c.ShutdownTimeout, DefaultShutdownTimeout),
		orDefault("ProxyHeaderTimeout", &c.ProxyHeaderTimeout, netfilter.DefaultProxyHeaderTimeout),
	} {
		if err != nil {
			return c, err
		}
	}
	if c.TLS == nil {
		opts := append([]trust.ConfigOption{trust.WithRevocation(c.Revocation)}, c.TrustOptions...)
		c.TLS = trust.ServerConfig(c.Trust, []string{trust.ALPNTunnel}, opts...)
	}
	return c, nil
}

// orDefault refuses a negative *v (a *FieldError naming field) and makes a
// zero one def, as Config's fields document.
func orDefault[T int | int64 | time.Duration](field string, v *T, def T) error {
	switch {
	case *v < 0:
		return &FieldError{field, fmt.Errorf("%v is negative", *v)}
	case *v == 0:
		*v = def
	}
	return nil
}
