package server

import (
	"errors"
	"net"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/netfilter"
)

// listen wraps ln with the address filter: with trusted PROXY-protocol
// upstreams, connections from them pass Accept undecided and admit decides
// on the address from their header.
func (s *Server) listen(ln net.Listener) net.Listener {
	if s.cfg.ProxyProtocolFrom == nil || s.cfg.ProxyProtocolFrom.Len() == 0 {
		return s.cfg.Filter.WrapListener(ln)
	}
	return s.cfg.Filter.WrapProxyListener(ln, s.cfg.ProxyProtocolFrom)
}

// admit is the prologue step that reads a trusted upstream's PROXY header
// (under ProxyHeaderTimeout; the connection is pending meanwhile, as pc)
// and applies the allowlist and the per-address cap to the client address it
// names. It returns the connection to use from then on, whose RemoteAddr is
// the client's, or c and false when c was refused (reset, counted and logged
// by the filter), was a health check, or was evicted or shut down while it
// waited. A connection that is not from an upstream was filtered in Accept
// and passes unchanged.
func (s *Server) admit(c net.Conn, pc *pendingConn) (net.Conn, bool) {
	up, ok := c.(*netfilter.UpstreamConn)
	if !ok {
		return c, true
	}
	proxied, err := up.ReadHeader(s.cfg.ProxyHeaderTimeout)
	switch {
	case err != nil && s.pending.isGone(pc):
		return c, false // evicted (logged by the evictor) or shut down
	case errors.Is(err, netfilter.ErrUpstreamProbe):
		s.log.WithFields(logrus.Fields{audit.Addr: c.RemoteAddr().String()}).Debug("upstream health check")
		return c, false
	case err != nil:
		// The filter's rate-limited conn_rejected line is the audit event;
		// this one adds the parse error for whoever debugs the balancer.
		s.log.WithFields(logrus.Fields{audit.Addr: c.RemoteAddr().String(), audit.Error: err.Error()}).
			Debug("no valid PROXY header from a trusted upstream")
		s.cfg.Filter.Reject(c, up.Upstream(), netfilter.ReasonProxyHeader)
		return c, false
	}
	ip, ok := netfilter.PeerAddr(proxied.RemoteAddr())
	if !ok || !s.cfg.Filter.Allowed(ip) {
		s.cfg.Filter.Reject(proxied, ip, netfilter.ReasonIPNotAllowed)
		return c, false
	}
	held, ok := s.cfg.Filter.Hold(proxied, ip)
	if !ok {
		s.cfg.Filter.Reject(proxied, ip, netfilter.ReasonConnLimit)
		return c, false
	}
	return held, true
}
