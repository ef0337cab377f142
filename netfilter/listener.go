package netfilter

import (
	"net"
	"sync"
)

// WrapListener returns a net.Listener whose Accept returns only connections
// from allowed addresses. Others are rejected with Reject (reason
// ip_not_allowed) inside Accept, which decides on the socket address alone:
// it never reads from or waits on a peer. A connection whose peer address has
// no IP is rejected too. An allowed connection takes one of its address's
// slots (Hold) and is rejected with ReasonConnLimit when there is none.
// Accept returns the inner listener's errors as they are. Close closes the
// inner listener; it is idempotent and returns the first Close's result every
// time. Addr is the inner listener's.
//
// The filter sees the socket address: put the wrapper outside any layer that
// reads (PROXY protocol, TLS). Behind a trusted PROXY-protocol upstream, call
// Allowed, Hold and Reject with the address from the header instead.
func (f *Filter) WrapListener(ln net.Listener) net.Listener {
	return &filterListener{inner: ln, f: f}
}

// filterListener is the net.Listener returned by Filter.WrapListener.
type filterListener struct {
	inner     net.Listener
	f         *Filter
	closeOnce sync.Once
	closeErr  error // set once by closeOnce
}

var _ net.Listener = (*filterListener)(nil)

func (l *filterListener) Accept() (net.Conn, error) {
	for {
		c, err := l.inner.Accept()
		if err != nil {
			return nil, err
		}
		ip, ok := PeerAddr(c.RemoteAddr())
		if !ok || !l.f.Allowed(ip) {
			l.f.Reject(c, ip, ReasonIPNotAllowed)
			continue
		}
		if hc, ok := l.f.Hold(c, ip); ok {
			return hc, nil
		}
		l.f.Reject(c, ip, ReasonConnLimit)
	}
}

func (l *filterListener) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.inner.Close() })
	return l.closeErr
}

func (l *filterListener) Addr() net.Addr { return l.inner.Addr() }
