package server

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/tunnel-dev/tunnel/internal/wire"
)

// Route names a backend that clients reach by name.
type Route struct {
	Name   string // a wire route name: 1-255 of [A-Za-z0-9._-]
	Target string // "host:port" (resolved at dial time) or "unix:/path"

	// ProxyV2 sends a PROXY protocol v2 header to the backend before any
	// client byte, naming the real client address and the address it
	// connected to (stunnel's "protocol = proxy"). The backend must expect it.
	ProxyV2 bool

	// ProxyV1 sends the text PROXY protocol v1 header instead ("PROXY TCP4
	// src dst sport dport\r\n"), for backends that speak only v1. A route
	// has at most one of ProxyV1 and ProxyV2.
	ProxyV1 bool

	// Access holds the route's own rules (server/authz.go): which verified
	// identities and client addresses may open streams to it. Nil admits
	// every client the listener admitted. ParseRoute leaves it nil; the
	// config file sets it.
	Access *Access
}

// Route options: ",OPTION" words after the target.
const (
	optProxyV1 = "proxy-v1"
	optProxyV2 = "proxy-v2"
)

// ParseRoute parses "NAME=TARGET[,OPTION]...", where TARGET is "host:port"
// or "unix:/absolute/path" (a path with a comma cannot be written here) and
// OPTION is "proxy-v1" or "proxy-v2" (not both). The host is not resolved
// here.
func ParseRoute(s string) (Route, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok {
		return Route{}, fmt.Errorf("server: route %q: want NAME=HOST:PORT or NAME=unix:/PATH", s)
	}
	target, opts, hasOpts := strings.Cut(rest, ",")
	r := Route{Name: strings.TrimSpace(name), Target: strings.TrimSpace(target)}
	if hasOpts {
		for _, o := range strings.Split(opts, ",") {
			if err := r.setOption(strings.TrimSpace(o)); err != nil {
				return Route{}, fmt.Errorf("server: route %q: %w", s, err)
			}
		}
	}
	if err := r.check(); err != nil {
		return Route{}, fmt.Errorf("server: route %q: %w", s, err)
	}
	return r, nil
}

// setOption applies one ",OPTION" of a route. New options go here.
func (r *Route) setOption(o string) error {
	switch o {
	case optProxyV1:
		r.ProxyV1 = true
	case optProxyV2:
		r.ProxyV2 = true
	default:
		return fmt.Errorf("unknown option %q (known: %s, %s)", o, optProxyV1, optProxyV2)
	}
	return nil
}

func (r Route) check() error {
	if err := wire.CheckRouteName(r.Name); err != nil {
		return err
	}
	if r.ProxyV1 && r.ProxyV2 {
		return fmt.Errorf("%s and %s together: a backend takes one PROXY header", optProxyV1, optProxyV2)
	}
	if path, ok := strings.CutPrefix(r.Target, "unix:"); ok {
		if !strings.HasPrefix(path, "/") {
			return fmt.Errorf("unix socket path %q is not absolute", path)
		}
		return nil
	}
	host, port, err := net.SplitHostPort(r.Target)
	if err != nil {
		return fmt.Errorf("target %q: %w", r.Target, err)
	}
	if host == "" {
		return fmt.Errorf("target %q has no host", r.Target)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("target %q: port %q is not a number from 1 to 65535", r.Target, port)
	}
	return nil
}

// proxyVersion is the PROXY protocol version the route sends its backend,
// 0 for none.
func (r Route) proxyVersion() byte {
	switch {
	case r.ProxyV1:
		return 1
	case r.ProxyV2:
		return 2
	}
	return 0
}

// network returns the dial network and address of the target.
func (r Route) network() (string, string) {
	if path, ok := strings.CutPrefix(r.Target, "unix:"); ok {
		return "unix", path
	}
	return "tcp", r.Target
}
