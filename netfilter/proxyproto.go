package netfilter

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// ReasonProxyHeader is the rejection reason for a connection from a trusted
// PROXY-protocol upstream that did not start with a valid PROXY header in
// time.
const ReasonProxyHeader = "proxy_header"

// DefaultProxyHeaderTimeout bounds reading a PROXY header when the caller
// passes zero. A load balancer writes the header with its first segment, so
// anything slower is a broken or hostile peer.
const DefaultProxyHeaderTimeout = 5 * time.Second

// ErrUpstreamProbe is returned by UpstreamConn.ReadHeader when the upstream
// closed the connection before sending a single byte: a load balancer's TCP
// health check, not a client. Callers close it quietly.
var ErrUpstreamProbe = errors.New("netfilter: upstream closed before sending a PROXY header (health check)")

// ProxyHeaderError reports a connection from a trusted upstream that did not
// start with a valid PROXY v1 or v2 header within the timeout.
type ProxyHeaderError struct {
	Upstream netip.Addr // the socket address of the upstream
	Err      error      // a go-proxyproto error, or a net.Error timeout
}

func (e *ProxyHeaderError) Error() string {
	return fmt.Sprintf("netfilter: PROXY header from upstream %s: %v", ipString(e.Upstream), e.Err)
}

func (e *ProxyHeaderError) Unwrap() error { return e.Err }

// WrapProxyListener is WrapListener for a listener behind PROXY-protocol
// upstreams (load balancers). A connection whose socket address is in
// upstreams is returned undecided, as an *UpstreamConn: its client address
// is in the PROXY header it must send, which the caller reads with
// ReadHeader and then checks with Allowed, off the accept path. Any other
// connection is filtered on its socket address exactly as WrapListener does;
// if such a peer sends a PROXY header anyway, that header is just its first
// bytes, never trusted. Accept does no I/O. A nil or empty upstreams makes it
// WrapListener.
func (f *Filter) WrapProxyListener(ln net.Listener, upstreams *Allowlist) net.Listener {
	return &proxyListener{filterListener: filterListener{inner: ln, f: f}, upstreams: upstreams}
}

// proxyListener is the net.Listener returned by Filter.WrapProxyListener.
type proxyListener struct {
	filterListener
	upstreams *Allowlist // read-only; nil trusts nobody
}

var _ net.Listener = (*proxyListener)(nil)

func (l *proxyListener) Accept() (net.Conn, error) {
	for {
		c, err := l.inner.Accept()
		if err != nil {
			return nil, err
		}
		ip, ok := PeerAddr(c.RemoteAddr())
		switch {
		case ok && l.upstreams != nil && l.upstreams.Contains(ip):
			// No per-address slot: an upstream carries many clients;
			// the client's address takes one once the header names it.
			return &UpstreamConn{Conn: c, upstream: ip}, nil
		case ok && l.f.Allowed(ip):
			if hc, ok := l.f.Hold(c, ip); ok {
				return hc, nil
			}
			l.f.Reject(c, ip, ReasonConnLimit)
			continue
		}
		l.f.Reject(c, ip, ReasonIPNotAllowed)
	}
}

// UpstreamConn is a connection from a trusted PROXY-protocol upstream whose
// header has not been read yet. Call ReadHeader before anything else reads
// from it. It forwards SetLinger and CloseWrite to the socket, so Reject can
// still reset it.
type UpstreamConn struct {
	net.Conn
	upstream netip.Addr // the socket address of the upstream, unmapped
}

// Upstream returns the upstream's socket address.
func (u *UpstreamConn) Upstream() netip.Addr { return u.upstream }

// SetLinger forwards to the socket when it has SetLinger.
func (u *UpstreamConn) SetLinger(sec int) error { return setLinger(u.Conn, sec) }

// CloseWrite forwards to the socket when it has CloseWrite.
func (u *UpstreamConn) CloseWrite() error { return closeWrite(u.Conn) }

// ReadHeader reads the PROXY v1 or v2 header that must open the connection,
// under timeout (zero means DefaultProxyHeaderTimeout), then clears the read
// deadline. It returns the connection to use from then on: a *ProxiedConn
// whose RemoteAddr is the client address from the header and LocalAddr the
// destination from it, and whose Read returns the bytes that followed the
// header. A LOCAL (v2) or UNKNOWN (v1) header, or one for a non-TCP
// transport, carries no client address: the returned connection keeps the
// socket addresses, so the upstream itself is the client. A close before
// any byte returns ErrUpstreamProbe; anything else that is not a valid
// header within the timeout returns a *ProxyHeaderError. It does not close
// u on error. It must be called once, from one goroutine.
func (u *UpstreamConn) ReadHeader(timeout time.Duration) (*ProxiedConn, error) {
	if timeout <= 0 {
		timeout = DefaultProxyHeaderTimeout
	}
	if err := u.Conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, &ProxyHeaderError{Upstream: u.upstream, Err: err}
	}
	br := bufio.NewReaderSize(u.Conn, 512)
	src, dst, err := parseProxyHeader(br, u.Conn.RemoteAddr(), u.Conn.LocalAddr())
	_ = u.Conn.SetReadDeadline(time.Time{}) // a failure shows on the next read
	if err != nil {
		if errors.Is(err, ErrUpstreamProbe) {
			return nil, err
		}
		return nil, &ProxyHeaderError{Upstream: u.upstream, Err: err}
	}
	return &ProxiedConn{UpstreamConn: u, br: br, remote: src, local: dst}, nil
}

// parseProxyHeader reads one PROXY header from br and returns the client
// (source) and destination addresses it names, or sockRemote and sockLocal
// when it names none.
func parseProxyHeader(br *bufio.Reader, sockRemote, sockLocal net.Addr) (src, dst net.Addr, err error) {
	if _, err := br.Peek(1); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			return nil, nil, ErrUpstreamProbe
		}
		return nil, nil, err
	}
	h, err := proxyproto.Read(br)
	if err != nil {
		return nil, nil, err
	}
	if h.Command.IsLocal() || !h.TransportProtocol.IsStream() || h.TransportProtocol.IsUnix() {
		return sockRemote, sockLocal, nil
	}
	s, d, ok := h.TCPAddrs()
	if !ok || s == nil || d == nil {
		return sockRemote, sockLocal, nil
	}
	return s, d, nil
}

// ProxiedConn is a connection from a trusted upstream after its PROXY
// header: RemoteAddr and LocalAddr are the header's, and Read first returns
// what was buffered past the header. Only one goroutine may Read at a time,
// as with any net.Conn used by crypto/tls.
type ProxiedConn struct {
	*UpstreamConn
	remote, local net.Addr
	br            *bufio.Reader // bytes read past the header; nil once drained; used by the reader only
}

var _ net.Conn = (*ProxiedConn)(nil)

// RemoteAddr is the client address from the PROXY header.
func (p *ProxiedConn) RemoteAddr() net.Addr { return p.remote }

// LocalAddr is the destination address from the PROXY header.
func (p *ProxiedConn) LocalAddr() net.Addr { return p.local }

// Read returns the bytes buffered past the header first, then reads the
// socket.
func (p *ProxiedConn) Read(b []byte) (int, error) {
	if p.br != nil && p.br.Buffered() == 0 {
		p.br = nil // drained: read the socket directly from now on
	}
	if p.br != nil {
		return p.br.Read(b)
	}
	return p.UpstreamConn.Conn.Read(b)
}

func setLinger(c net.Conn, sec int) error {
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		return l.SetLinger(sec)
	}
	return nil
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}
