package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/netfilter"
)

// Defaults for the zero values of Config's fields.
const (
	DefaultHandshakeTimeout     = 10 * time.Second
	DefaultDialTimeout          = 5 * time.Second
	DefaultHeaderTimeout        = 10 * time.Second
	DefaultShutdownTimeout      = 30 * time.Second
	DefaultKeepalive            = 15 * time.Second
	DefaultMaxStreamsPerSession = 1024
)

// DefaultMaxHandshakes is the default cap on TLS handshakes in flight: 128
// per CPU the process may use (256 on a 2-core machine). A handshake costs
// a signature and a key exchange; more in flight only adds latency.
func DefaultMaxHandshakes() int { return 128 * runtime.GOMAXPROCS(0) }

// Config configures a Server. It must not be modified after New.
type Config struct {
	// TLS is the server's TLS configuration (trust.ServerConfig); required.
	// It must require and verify client certificates.
	TLS *tls.Config

	// Filter admits or rejects peers by address before any byte is read;
	// required.
	Filter *netfilter.Filter

	// Routes are the named backends; at least one, names unique.
	Routes []Route

	// HandshakeTimeout bounds the TLS handshake; zero means
	// DefaultHandshakeTimeout, negative is an error.
	HandshakeTimeout time.Duration

	// MaxHandshakes caps handshakes in flight; a connection past the cap is
	// reset (reason handshake_limit). Zero means DefaultMaxHandshakes().
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

	// ShutdownTimeout is how long Serve lets open streams finish once its
	// context is done; zero means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration

	// Log receives the audit events; required.
	Log *logrus.Entry
}

// withDefaults checks c and returns a copy with zero values replaced by the
// defaults. The error names the field.
func (c Config) withDefaults() (Config, error) {
	switch {
	case c.TLS == nil:
		return c, errors.New("server: Config.TLS is nil")
	case c.Filter == nil:
		return c, errors.New("server: Config.Filter is nil")
	case c.Log == nil:
		return c, errors.New("server: Config.Log is nil")
	case len(c.Routes) == 0:
		return c, errors.New("server: no routes configured")
	}
	seen := make(map[string]bool, len(c.Routes))
	for _, r := range c.Routes {
		if err := r.check(); err != nil {
			return c, fmt.Errorf("server: route %q: %w", r.Name, err)
		}
		if seen[r.Name] {
			return c, fmt.Errorf("server: route %q configured twice", r.Name)
		}
		seen[r.Name] = true
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"HandshakeTimeout", &c.HandshakeTimeout, DefaultHandshakeTimeout},
		{"DialTimeout", &c.DialTimeout, DefaultDialTimeout},
		{"HeaderTimeout", &c.HeaderTimeout, DefaultHeaderTimeout},
		{"Keepalive", &c.Keepalive, DefaultKeepalive},
		{"IdleTimeout", &c.IdleTimeout, 0},
		{"ShutdownTimeout", &c.ShutdownTimeout, DefaultShutdownTimeout},
	} {
		if *d.v < 0 {
			return c, fmt.Errorf("server: Config.%s is negative (%v)", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.MaxHandshakes < 0 || c.MaxStreamsPerSession < 0 {
		return c, errors.New("server: a limit in Config is negative")
	}
	if c.MaxHandshakes == 0 {
		c.MaxHandshakes = DefaultMaxHandshakes()
	}
	if c.MaxStreamsPerSession == 0 {
		c.MaxStreamsPerSession = DefaultMaxStreamsPerSession
	}
	return c, nil
}
