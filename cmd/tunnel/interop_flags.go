package main

import (
	"net"
	"net/netip"

	"github.com/urfave/cli/v2"

	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/server"
)

// loadLBFlags checks --raw-route against the routes and parses
// --proxy-protocol-from; a nil allowlist means no trusted upstream.
func loadLBFlags(c *cli.Context, routes []server.Route) (string, *netfilter.Allowlist, error) {
	raw := c.String("raw-route")
	if raw != "" {
		found := false
		for _, r := range routes {
			found = found || r.Name == raw
		}
		if !found {
			return "", nil, flagError("--raw-route", "%q is not the name of a --route", raw)
		}
	}
	from := splitValues(c.StringSlice("proxy-protocol-from"), ",")
	if len(from) == 0 {
		return raw, nil, nil
	}
	up, err := netfilter.ParseAllowlist(from)
	if err != nil {
		return "", nil, &configError{flag: "--proxy-protocol-from", err: err}
	}
	return raw, up, nil
}

// loadServerFlags reads the client's --server list (at least one HOST:PORT)
// and --source (an IP, or none).
func loadServerFlags(c *cli.Context) ([]string, netip.Addr, error) {
	servers := splitValues(c.StringSlice("server"), ",")
	if len(servers) == 0 {
		return nil, netip.Addr{}, flagError("--server", "required: the server's HOST:PORT")
	}
	for _, s := range servers {
		host, port, err := net.SplitHostPort(s)
		if err != nil || host == "" || port == "" {
			return nil, netip.Addr{}, flagError("--server", "%q is not HOST:PORT", s)
		}
	}
	var source netip.Addr
	if v := c.String("source"); v != "" {
		ip, err := netip.ParseAddr(v)
		if err != nil || ip.Zone() != "" {
			return nil, netip.Addr{}, flagError("--source", "%q is not an IP address", v)
		}
		source = ip
	}
	return servers, source, nil
}
