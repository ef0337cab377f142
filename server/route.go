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
}

// ParseRoute parses "NAME=TARGET", where TARGET is "host:port" or
// "unix:/absolute/path". The host is not resolved here.
func ParseRoute(s string) (Route, error) {
	name, target, ok := strings.Cut(s, "=")
	if !ok {
		return Route{}, fmt.Errorf("server: route %q: want NAME=HOST:PORT or NAME=unix:/PATH", s)
	}
	r := Route{Name: strings.TrimSpace(name), Target: strings.TrimSpace(target)}
	if err := r.check(); err != nil {
		return Route{}, fmt.Errorf("server: route %q: %w", s, err)
	}
	return r, nil
}

func (r Route) check() error {
	if err := wire.CheckRouteName(r.Name); err != nil {
		return err
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

// network returns the dial network and address of the target.
func (r Route) network() (string, string) {
	if path, ok := strings.CutPrefix(r.Target, "unix:"); ok {
		return "unix", path
	}
	return "tcp", r.Target
}
