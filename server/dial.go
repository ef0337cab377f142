package server

import (
	"context"
	"net"
	"time"

	"github.com/tunnel-dev/tunnel/netfilter"
)

// dial connects to the route's backend under DialTimeout.
func (s *Server) dial(ctx context.Context, r Route) (net.Conn, error) {
	network, addr := r.network()
	d := net.Dialer{
		Timeout:         s.cfg.DialTimeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 4},
	}
	// NoDelay is Go's default for TCP; the copy loop writes whole buffers.
	began := time.Now()
	c, err := d.DialContext(ctx, network, addr)
	if err == nil {
		s.stats.dialTime.observe(time.Since(began))
	}
	return c, err
}

// dialBackend dials the route's backend and, for a ProxyV1 or ProxyV2
// route, writes a PROXY header of that version naming client (the real
// client address: from the load balancer's PROXY header when there is one)
// and local (the address the client connected to) before any client byte.
// The header write is bounded by DialTimeout. On error nothing is left open.
func (s *Server) dialBackend(ctx context.Context, r Route, client, local net.Addr) (net.Conn, error) {
	backend, err := s.dial(ctx, r)
	v := r.proxyVersion()
	if err != nil || v == 0 {
		return backend, err
	}
	if err := writeProxyHeader(backend, v, client, local, s.cfg.DialTimeout); err != nil {
		backend.Close()
		return nil, err
	}
	return backend, nil
}

// writeProxyHeader writes one PROXY header of version v (1 or 2) for src ->
// dst to c under timeout (netfilter.WriteProxyHeader).
func writeProxyHeader(c net.Conn, v byte, src, dst net.Addr, timeout time.Duration) error {
	return netfilter.WriteProxyHeader(c, v, src, dst, timeout)
}
