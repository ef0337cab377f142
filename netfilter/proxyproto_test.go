package netfilter

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// listenProxy returns a listener on 127.0.0.1:0 wrapped by f, trusting the
// upstreams as PROXY-protocol senders. It is closed at cleanup.
func listenProxy(t *testing.T, f *Filter, upstreams ...string) net.Listener {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up, err := ParseAllowlist(upstreams)
	if err != nil {
		t.Fatal(err)
	}
	ln := f.WrapProxyListener(inner, up)
	t.Cleanup(func() { ln.Close() })
	return ln
}

func tcpAddr(s string) *net.TCPAddr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }

func headerBytes(t *testing.T, version byte, src, dst string) []byte {
	t.Helper()
	b, err := proxyproto.HeaderProxyFromAddrs(version, tcpAddr(src), tcpAddr(dst)).Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestUpstreamHeaderGivesClientAddress: a trusted upstream's v1 or v2 header
// names the client, the filter is not consulted in Accept, and the bytes
// sent right behind the header (in the same segment) are read intact.
func TestUpstreamHeaderGivesClientAddress(t *testing.T) {
	for _, version := range []byte{1, 2} {
		t.Run("v"+string('0'+version), func(t *testing.T) {
			// The allowlist names only the client: the upstream itself
			// (127.0.0.1) is not on it and still gets through Accept.
			f, _, _ := newTestFilter(t, 0, "192.0.2.7/32")
			ln := listenProxy(t, f, "127.0.0.1/32")
			ch := acceptLoop(t, ln)
			c := dialFrom(t, ln, "127.0.0.1")
			msg := append(headerBytes(t, version, "192.0.2.7:40000", "198.51.100.1:8443"), "hello tls"...)
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			up, ok := acceptOne(t, ch).(*UpstreamConn)
			if !ok {
				t.Fatal("Accept did not return an *UpstreamConn for a trusted upstream")
			}
			if got := up.Upstream(); got != netip.MustParseAddr("127.0.0.1") {
				t.Errorf("Upstream() = %v, want 127.0.0.1", got)
			}
			pc, err := up.ReadHeader(time.Second)
			if err != nil {
				t.Fatalf("ReadHeader: %v", err)
			}
			if got := pc.RemoteAddr().String(); got != "192.0.2.7:40000" {
				t.Errorf("RemoteAddr() = %s, want the header's source 192.0.2.7:40000", got)
			}
			if got := pc.LocalAddr().String(); got != "198.51.100.1:8443" {
				t.Errorf("LocalAddr() = %s, want the header's destination", got)
			}
			ip, _ := PeerAddr(pc.RemoteAddr())
			if !f.Allowed(ip) {
				t.Errorf("filter refuses the header's address %v", ip)
			}
			c.CloseWrite()
			rest, err := io.ReadAll(pc)
			if err != nil || string(rest) != "hello tls" {
				t.Errorf("bytes after the header = %q, %v; want %q", rest, err, "hello tls")
			}
		})
	}
}

// TestUntrustedPeerHeaderIsPlainBytes: a PROXY header from an address that
// is not a trusted upstream is not parsed: the conn is filtered on its
// socket address and its first bytes are the header, as sent.
func TestUntrustedPeerHeaderIsPlainBytes(t *testing.T) {
	f, _, _ := newTestFilter(t, 0, "127.0.0.2/32")
	ln := listenProxy(t, f, "127.0.0.1/32")
	ch := acceptLoop(t, ln)
	c := dialFrom(t, ln, "127.0.0.2")
	hdr := headerBytes(t, 2, "127.0.0.1:1", "127.0.0.1:2")
	c.Write(hdr)
	c.CloseWrite()
	got := acceptOne(t, ch)
	if _, ok := got.(*UpstreamConn); ok {
		t.Fatal("an untrusted peer was treated as an upstream")
	}
	if a := got.RemoteAddr().(*net.TCPAddr).IP.String(); a != "127.0.0.2" {
		t.Errorf("RemoteAddr = %s, want the socket address 127.0.0.2", a)
	}
	b, _ := io.ReadAll(got)
	if !bytes.Equal(b, hdr) {
		t.Errorf("first bytes = %x, want the header bytes unparsed %x", b, hdr)
	}
	// And an untrusted peer off the allowlist is reset whatever it sends.
	expectReset(t, ln, "127.0.0.3")
}

// TestUpstreamHeaderFailures: no header, a bad one, a slow one and a bare
// health-check connect each fail ReadHeader in their own way.
func TestUpstreamHeaderFailures(t *testing.T) {
	tests := []struct {
		name      string
		send      []byte
		closeSend bool // half-close after sending
		wantProbe bool
		wantTime  bool // a timeout
	}{
		{name: "tls hello instead of header", send: []byte("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), closeSend: true},
		{name: "v1 garbage", send: []byte("PROXY TCP4 nonsense\r\n"), closeSend: true},
		{name: "truncated v2", send: headerBytes(t, 2, "192.0.2.1:1", "192.0.2.2:2")[:14], closeSend: true},
		{name: "silent upstream", wantTime: true},
		{name: "health check", closeSend: true, wantProbe: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, _, _ := newTestFilter(t, 0, "192.0.2.0/24")
			ln := listenProxy(t, f, "127.0.0.1/32")
			ch := acceptLoop(t, ln)
			c := dialFrom(t, ln, "127.0.0.1")
			c.Write(tt.send)
			if tt.closeSend {
				c.CloseWrite()
			}
			up := acceptOne(t, ch).(*UpstreamConn)
			start := time.Now()
			_, err := up.ReadHeader(200 * time.Millisecond)
			if tt.wantProbe {
				if !errors.Is(err, ErrUpstreamProbe) {
					t.Fatalf("ReadHeader = %v, want ErrUpstreamProbe", err)
				}
				return
			}
			he, ok := errors.AsType[*ProxyHeaderError](err)
			if !ok {
				t.Fatalf("ReadHeader = %v, want a *ProxyHeaderError", err)
			}
			if he.Upstream != netip.MustParseAddr("127.0.0.1") {
				t.Errorf("error names upstream %v", he.Upstream)
			}
			ne, isNet := errors.AsType[net.Error](err)
			if timedOut := isNet && ne.Timeout(); timedOut != tt.wantTime {
				t.Errorf("timeout = %v, want %v (err %v)", timedOut, tt.wantTime, err)
			}
			if time.Since(start) > 5*time.Second {
				t.Errorf("ReadHeader took %v with a 200ms timeout", time.Since(start))
			}
		})
	}
}

// TestUpstreamLocalHeaderKeepsSocketAddress: a v2 LOCAL header (what a load
// balancer sends for its own checks) names no client, so the upstream's
// socket address stands, and must pass the allowlist itself.
func TestUpstreamLocalHeaderKeepsSocketAddress(t *testing.T) {
	f, _, _ := newTestFilter(t, 0, "192.0.2.0/24")
	ln := listenProxy(t, f, "127.0.0.1/32")
	ch := acceptLoop(t, ln)
	c := dialFrom(t, ln, "127.0.0.1")
	h := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	if _, err := h.WriteTo(c); err != nil {
		t.Fatal(err)
	}
	up := acceptOne(t, ch).(*UpstreamConn)
	pc, err := up.ReadHeader(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ip, _ := PeerAddr(pc.RemoteAddr())
	if ip != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("RemoteAddr after LOCAL = %v, want the socket address", pc.RemoteAddr())
	}
	if f.Allowed(ip) {
		t.Error("the upstream's own address passed an allowlist that does not name it")
	}
}

// FuzzParseProxyHeader: no input panics, and a parsed header leaves the
// reader positioned exactly after it.
func FuzzParseProxyHeader(f *testing.F) {
	for _, seed := range [][]byte{
		[]byte("PROXY TCP4 192.0.2.1 192.0.2.2 1234 443\r\nrest"),
		[]byte("PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"),
		[]byte("PROXY UNKNOWN\r\n"),
		[]byte("\x16\x03\x01"),
		[]byte(""),
	} {
		f.Add(seed)
	}
	if b, err := proxyproto.HeaderProxyFromAddrs(2, tcpAddr("[2001:db8::1]:5"), tcpAddr("[2001:db8::2]:6")).Format(); err == nil {
		f.Add(append(b, "tail"...))
	}
	sockR, sockL := tcpAddr("127.0.0.1:1"), tcpAddr("127.0.0.1:2")
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 512)
		src, dst, err := parseProxyHeader(br, sockR, sockL)
		if err != nil {
			return
		}
		if src == nil || dst == nil {
			t.Fatalf("parsed %q without addresses", in)
		}
		if _, ok := src.(*net.TCPAddr); !ok {
			t.Fatalf("source %T, want *net.TCPAddr", src)
		}
	})
}
