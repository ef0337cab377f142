package netfilter

import (
	"fmt"
	"net"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// WriteProxyHeader writes one PROXY protocol header of version v (1 or 2)
// for a connection from src to dst to c, under timeout, before any other
// byte: what a backend behind the tunnel reads to learn the real client
// (the server's ,proxy-v2 routes, a client's ,proxy-v2 publications).
// Addresses that are not TCP (a unix listener, say) give the header the
// protocol has for an unknown source: "PROXY UNKNOWN" in v1, a LOCAL-like
// UNSPEC header in v2. In v1 an IPv4 address beside an IPv6 one is written
// as IPv4-mapped IPv6, with TCP6. It clears c's write deadline afterwards.
func WriteProxyHeader(c net.Conn, v byte, src, dst net.Addr, timeout time.Duration) error {
	h := proxyproto.HeaderProxyFromAddrs(v, src, dst)
	if err := c.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		return fmt.Errorf("netfilter: PROXY v%d header: %w", v, err)
	}
	if _, err := h.WriteTo(c); err != nil {
		return fmt.Errorf("netfilter: PROXY v%d header to %s: %w", v, c.RemoteAddr(), err)
	}
	if err := c.SetWriteDeadline(time.Time{}); err != nil {
		return fmt.Errorf("netfilter: PROXY v%d header: %w", v, err)
	}
	return nil
}
