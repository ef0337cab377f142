package client

import (
	"cmp"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/trust"
)

// Defaults for the zero values of Config's fields.
const (
	DefaultConnectTimeout   = 10 * time.Second
	DefaultDialTimeout      = 10 * time.Second
	DefaultKeepalive        = 10 * time.Second
	DefaultKeepaliveTimeout = 10 * time.Second
	DefaultBackoffMin       = 100 * time.Millisecond
	DefaultBackoffMax       = 30 * time.Second
)

// tcpKeepAlive is set on every TCP connection the client makes or accepts:
// it finds a dead peer on a path where nothing else is sent.
var tcpKeepAlive = net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 4}

// Config configures a Client. It must not be modified after New. A
// negative duration is an error; New reports each bad field as a
// *FieldError.
type Config struct {
	// Server is the server's host:port; required.
	Server string

	// Failover lists more servers (host:port) that serve the same routes.
	// The client dials Server first and stays with whichever server it
	// reached; when a dial fails it tries the next address at once, and
	// backs off only after every address failed in a row. Nil: Server only.
	Failover []string

	// Source is the local IP the client dials the servers from (stunnel's
	// "local"); the zero value lets the kernel choose.
	Source netip.Addr

	// Raw makes the client speak plain TLS: every local connection gets its
	// own mutual-TLS connection to the server, with no ALPN and no yamux,
	// and the route name of its forward is only a label in the logs. That
	// is what a stunnel or ghostunnel server, or a tunnel server's raw
	// route, expects. A TLS config set here must then offer no ALPN.
	Raw bool

	// Trust holds the TLS material the client presents and verifies the
	// server with; Reload swaps it. Required unless TLS is set.
	Trust *trust.Store

	// ServerName is the name the server's certificate must carry; empty
	// means the host of the address being dialled.
	ServerName string

	// Revocation, if set, checks the server's chain for revocation on every
	// dial (when TLS is nil), and Reload has it re-read the CRL files. The
	// caller starts and closes it.
	Revocation *trust.RevocationChecker

	// TLS returns the TLS configuration for one dial of the server. It is
	// called for every dial, so a reloaded certificate is used by the next
	// dial; a config whose ServerName is empty gets the host of the address
	// being dialled. Nil means trust.ClientConfig(Trust, ServerName, ALPN,
	// trust.WithRevocation(Revocation)), where ALPN is trust.ALPNTunnel, or
	// none in Raw mode.
	TLS func() *tls.Config

	// TrustOptions add checks to the default TLS config (when TLS is nil),
	// after WithRevocation: trust.WithServerSPIFFEID (the server known by
	// its SPIFFE ID instead of ServerName), trust.WithRequireOCSPStaple.
	// Nil adds nothing.
	TrustOptions []trust.ConfigOption

	// Forwards are the local listeners. A client needs at least one
	// forward or one publication.
	Forwards []Forward

	// Publish are the services behind the client that it publishes over
	// its session (reverse tunnels): the server's expose of each name
	// carries its inbound connections here. Names unique.
	Publish []Publish

	// PublishMaxStreams caps the streams the server may have open on one
	// session at once (reverse streams for the publications); one past it
	// is refused with the over-limit status before any of its data is
	// buffered. Zero means DefaultPublishMaxStreams; negative is an error.
	PublishMaxStreams int

	// ConnectTimeout is how long a local connection waits for the session
	// when it is down before it is closed; zero means DefaultConnectTimeout.
	ConnectTimeout time.Duration

	// DialTimeout bounds one dial of the server, TCP and TLS together, and
	// one dial of a publication's target; zero means DefaultDialTimeout.
	DialTimeout time.Duration

	// Keepalive is the yamux ping interval: a dead server is noticed within
	// Keepalive plus KeepaliveTimeout. Zero means DefaultKeepalive.
	Keepalive time.Duration

	// KeepaliveTimeout bounds the answer to a ping and any write to the
	// session; zero means DefaultKeepaliveTimeout.
	KeepaliveTimeout time.Duration

	// BackoffMin and BackoffMax bound the redial delay, which doubles per
	// failed attempt with full jitter; zero means the defaults.
	BackoffMin, BackoffMax time.Duration

	// IdleTimeout ends a stream on which no byte moved either way for this
	// long; zero means no limit.
	IdleTimeout time.Duration

	// Log receives the events; required.
	Log *logrus.Entry
}

// servers returns Server followed by Failover.
func (c Config) servers() []string { return append([]string{c.Server}, c.Failover...) }

// FieldError reports a bad value of a Config field: the field, as named in
// Config ("Server", "Forwards"), and what is wrong with it.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return "client: Config." + e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// withDefaults checks c and returns a copy with zero values replaced by the
// defaults. Errors are *FieldError.
func (c Config) withDefaults() (Config, error) {
	switch {
	case c.TLS == nil && c.Trust == nil:
		return c, &FieldError{"Trust", errors.New("required")}
	case c.Log == nil:
		return c, &FieldError{"Log", errors.New("required")}
	}
	for i, s := range c.servers() {
		if host, port, err := net.SplitHostPort(s); err != nil || host == "" || port == "" {
			field := "Server"
			if i > 0 {
				field = "Failover"
			}
			return c, &FieldError{field, fmt.Errorf("%q is not HOST:PORT", s)}
		}
	}
	if err := checkForwards(c.Forwards, len(c.Publish)); err != nil {
		return c, err
	}
	if err := checkPublish(c.Publish); err != nil {
		return c, err
	}
	if len(c.Publish) > 0 && c.Raw {
		return c, &FieldError{"Publish", errors.New("a raw client keeps no session to publish over")}
	}
	if c.PublishMaxStreams < 0 {
		return c, &FieldError{"PublishMaxStreams", fmt.Errorf("%d is negative", c.PublishMaxStreams)}
	}
	c.PublishMaxStreams = cmp.Or(c.PublishMaxStreams, DefaultPublishMaxStreams)
	durations := []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"ConnectTimeout", &c.ConnectTimeout, DefaultConnectTimeout},
		{"DialTimeout", &c.DialTimeout, DefaultDialTimeout},
		{"Keepalive", &c.Keepalive, DefaultKeepalive},
		{"KeepaliveTimeout", &c.KeepaliveTimeout, DefaultKeepaliveTimeout},
		{"BackoffMin", &c.BackoffMin, DefaultBackoffMin},
		{"BackoffMax", &c.BackoffMax, DefaultBackoffMax},
		{"IdleTimeout", &c.IdleTimeout, 0},
	}
	for _, d := range durations {
		if *d.v < 0 {
			return c, &FieldError{d.name, fmt.Errorf("%v is negative", *d.v)}
		}
		*d.v = cmp.Or(*d.v, d.def)
	}
	if c.BackoffMax < c.BackoffMin {
		return c, &FieldError{"BackoffMax", fmt.Errorf("%v is below BackoffMin %v", c.BackoffMax, c.BackoffMin)}
	}
	if c.TLS == nil {
		alpn := []string{trust.ALPNTunnel}
		if c.Raw {
			alpn = nil // what stunnel and ghostunnel servers, and a raw route, expect
		}
		store, name := c.Trust, c.ServerName
		opts := append([]trust.ConfigOption{trust.WithRevocation(c.Revocation)}, c.TrustOptions...)
		c.TLS = func() *tls.Config { return trust.ClientConfig(store, name, alpn, opts...) }
	}
	return c, nil
}

// checkForwards checks a set of forwards, for New and SetForwards alike: at
// least one unless there are publications (npub), each valid, none given
// twice. Errors are *FieldError.
func checkForwards(fwds []Forward, npub int) error {
	if len(fwds) == 0 && npub == 0 {
		return &FieldError{"Forwards", errors.New("no forwards configured (and nothing published)")}
	}
	seen := map[Forward]bool{}
	for _, f := range fwds {
		if err := f.check(); err != nil {
			return &FieldError{"Forwards", fmt.Errorf("forward %s=%s: %w", f.Listen, f.Route, err)}
		}
		if seen[f] {
			return &FieldError{"Forwards", fmt.Errorf("forward %s=%s given twice", f.Listen, f.Route)}
		}
		seen[f] = true
	}
	return nil
}
