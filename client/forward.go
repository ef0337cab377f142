package client

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/tunnel-dev/tunnel/internal/systemd"
	"github.com/tunnel-dev/tunnel/internal/wire"
)

// Forward is a local listening address whose connections become streams to
// a route on the server.
type Forward struct {
	Listen string // host:port to listen on
	Route  string // the server's route name
}

// ParseForward parses "[HOST:]PORT=ROUTE". A bare port listens on
// 127.0.0.1: exposing a tunnel end beyond the host must be said explicitly.
// IPv6 hosts are bracketed ("[::1]:5432=db"). "systemd:NAME=ROUTE" takes
// the listening socket systemd passed as NAME (socket activation) instead
// of binding one.
func ParseForward(s string) (Forward, error) {
	listen, route, ok := strings.Cut(s, "=")
	if !ok {
		return Forward{}, fmt.Errorf("client: forward %q: want [HOST:]PORT=ROUTE", s)
	}
	listen, route = strings.TrimSpace(listen), strings.TrimSpace(route)
	if _, err := strconv.Atoi(listen); err == nil {
		listen = net.JoinHostPort("127.0.0.1", listen)
	}
	f := Forward{Listen: listen, Route: route}
	if err := f.check(); err != nil {
		return Forward{}, fmt.Errorf("client: forward %q: %w", s, err)
	}
	return f, nil
}

func (f Forward) check() error {
	if err := wire.CheckRouteName(f.Route); err != nil {
		return err
	}
	if name, ok := systemd.SocketName(f.Listen); ok {
		return systemd.CheckName(name)
	}
	host, port, err := net.SplitHostPort(f.Listen)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", f.Listen, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("listen address %q: port %q is not a number from 0 to 65535", f.Listen, port)
	}
	if host != "" && host != "localhost" {
		if _, err := parseIP(host); err != nil {
			return fmt.Errorf("listen address %q: host must be an IP address or localhost", f.Listen)
		}
	}
	return nil
}

func parseIP(s string) (net.IP, error) {
	ip := net.ParseIP(s)
	if ip == nil {
		return nil, fmt.Errorf("%q is not an IP address", s)
	}
	return ip, nil
}
