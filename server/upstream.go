package server

import (
	"context"
	"errors"
	"net"
	"time"

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

// admit is the step of handle that reads a trusted upstream's PROXY header
// (under ProxyHeaderTimeout, or until ctx ends) and applies the allowlist to
// the client address it names. It returns the connection to use from then
// on, whose RemoteAddr is the client's, or false when c was refused (reset,
// counted and logged by the filter) or was a health check. A connection
// that is not from an upstream was filtered in Accept and passes unchanged.
func (s *Server) admit(ctx context.Context, c net.Conn) (net.Conn, bool) {
	up, ok := c.(*netfilter.UpstreamConn)
	if !ok {
		return c, true
	}
	stop := context.AfterFunc(ctx, func() { up.SetReadDeadline(time.Now()) })
	pc, err := up.ReadHeader(s.cfg.ProxyHeaderTimeout)
	stop()
	switch {
	case errors.Is(err, netfilter.ErrUpstreamProbe):
		s.log.WithFields(logrus.Fields{audit.Addr: c.RemoteAddr().String()}).Debug("upstream health check")
		return nil, false
	case err != nil:
		// The filter's rate-limited conn_rejected line is the audit event;
		// this one adds the parse error for whoever debugs the balancer.
		s.log.WithFields(logrus.Fields{audit.Addr: c.RemoteAddr().String(), audit.Error: err.Error()}).
			Debug("no valid PROXY header from a trusted upstream")
		s.cfg.Filter.Reject(c, up.Upstream(), netfilter.ReasonProxyHeader)
		return nil, false
	}
	ip, ok := netfilter.PeerAddr(pc.RemoteAddr())
	if !ok || !s.cfg.Filter.Allowed(ip) {
		s.cfg.Filter.Reject(pc, ip, netfilter.ReasonIPNotAllowed)
		return nil, false
	}
	held, ok := s.cfg.Filter.Hold(pc, ip)
	if !ok {
		s.cfg.Filter.Reject(pc, ip, netfilter.ReasonConnLimit)
		return nil, false
	}
	return held, true
}
