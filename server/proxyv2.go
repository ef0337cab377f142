package server

import (
	"context"
	"fmt"
	"net"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// dialBackend dials the route's backend and, for a ProxyV2 route, writes a
// PROXY v2 header naming client (the real client address: from the load
// balancer's PROXY header when there is one) and local (the address the
// client connected to) before any client byte. The header write is bounded
// by DialTimeout. On error nothing is left open.
func (s *Server) dialBackend(ctx context.Context, r Route, client, local net.Addr) (net.Conn, error) {
	backend, err := s.dial(ctx, r)
	if err != nil || !r.ProxyV2 {
		return backend, err
	}
	if err := writeProxyV2(backend, client, local, s.cfg.DialTimeout); err != nil {
		backend.Close()
		return nil, err
	}
	return backend, nil
}

// writeProxyV2 writes one PROXY v2 PROXY-command header for src -> dst to c
// under timeout. Addresses that are not TCP (a unix listener, say) give a
// LOCAL-like UNSPEC header, as the protocol specifies for unknown sources.
func writeProxyV2(c net.Conn, src, dst net.Addr, timeout time.Duration) error {
	h := proxyproto.HeaderProxyFromAddrs(2, src, dst)
	if err := c.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		return fmt.Errorf("server: PROXY v2 header to backend: %w", err)
	}
	if _, err := h.WriteTo(c); err != nil {
		return fmt.Errorf("server: PROXY v2 header to backend %s: %w", c.RemoteAddr(), err)
	}
	if err := c.SetWriteDeadline(time.Time{}); err != nil {
		return fmt.Errorf("server: PROXY v2 header to backend: %w", err)
	}
	return nil
}
