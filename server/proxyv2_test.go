package server

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	proxyproto "github.com/pires/go-proxyproto"

	"github.com/tunnel-dev/tunnel/netfilter"
)

func TestParseRouteOptions(t *testing.T) {
	tests := []struct {
		in      string
		want    Route
		wantErr bool
	}{
		{in: "db=127.0.0.1:5432,proxy-v2", want: Route{Name: "db", Target: "127.0.0.1:5432", ProxyV2: true}},
		{in: "db=[::1]:5432, proxy-v2 ", want: Route{Name: "db", Target: "[::1]:5432", ProxyV2: true}},
		{in: "pg=unix:/run/pg.sock,proxy-v2", want: Route{Name: "pg", Target: "unix:/run/pg.sock", ProxyV2: true}},
		{in: "db=127.0.0.1:5432,proxy-v1", want: Route{Name: "db", Target: "127.0.0.1:5432", ProxyV1: true}},
		{in: "pg=unix:/run/pg.sock, proxy-v1", want: Route{Name: "pg", Target: "unix:/run/pg.sock", ProxyV1: true}},
		{in: "db=127.0.0.1:5432,proxy-v1,proxy-v2", wantErr: true},
		{in: "db=127.0.0.1:5432,proxy-v3", wantErr: true},
		{in: "db=127.0.0.1:5432,", wantErr: true},
		{in: "db=,proxy-v2", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseRoute(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseRoute(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && got != tt.want {
			t.Errorf("ParseRoute(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

// proxyBackend accepts connections that must open with a PROXY header and
// sends back the header's source address as one line, then echoes. A
// connection without a valid header gets "no header\n".
func proxyBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				br := bufio.NewReader(c)
				h, err := proxyproto.Read(br)
				if err != nil || h.Version != 2 {
					io.WriteString(c, "no header\n")
					return
				}
				io.WriteString(c, h.SourceAddr.String()+" "+h.DestinationAddr.String()+"\n")
				io.Copy(c, br)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// firstLine reads one line from r.
func firstLine(t *testing.T, r io.Reader) string {
	t.Helper()
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the backend's first line: %q, %v", line, err)
	}
	return line[:len(line)-1]
}

// v1Backend accepts connections and sends back, as one line, the bytes
// before the first "\r\n" (the PROXY v1 header, at most 107 bytes as the
// protocol allows), then echoes.
func v1Backend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				br := bufio.NewReaderSize(c, 107)
				line, err := br.ReadSlice('\n')
				if err != nil || !bytes.HasSuffix(line, []byte("\r\n")) {
					io.WriteString(c, "no v1 header\n")
					return
				}
				c.Write(append(line[:len(line)-2:len(line)-2], '\n'))
				io.Copy(c, br)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// TestRouteProxyV1: a proxy-v1 route's backend first gets the text PROXY
// v1 line naming the client's address and port and the one it connected
// to, on a tunnel stream and on the raw path alike, and then the client's
// bytes.
func TestRouteProxyV1(t *testing.T) {
	pki := newTestPKI(t)
	vb := v1Backend(t)
	r := startServer(t, pki, func(c *Config) {
		c.Routes = append(c.Routes, Route{Name: "v1", Target: vb, ProxyV1: true})
		c.RawRoute = "v1"
	})
	line := func(client net.Addr) string {
		src, dst := client.(*net.TCPAddr), netip.MustParseAddrPort(r.addr)
		return fmt.Sprintf("PROXY TCP4 %s %s %d %d", src.IP, dst.Addr(), src.Port, dst.Port())
	}
	s := dialSession(t, pki, r.addr)
	st, err := openRoute(t, s, header(t, "v1"))
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(st)
	if got, err := br.ReadString('\n'); err != nil || got != line(s.LocalAddr())+"\n" {
		t.Errorf("stream: backend saw %q (%v), want %q", got, err, line(s.LocalAddr()))
	}
	st.Write([]byte("after the header\n"))
	if got, _ := br.ReadString('\n'); got != "after the header\n" {
		t.Errorf("stream: client bytes after the header came back as %q", got)
	}
	raw := dialRaw(t, pki.clientTLS, r.addr)
	if got := firstLine(t, raw); got != line(raw.LocalAddr()) {
		t.Errorf("raw: backend saw %q, want %q", got, line(raw.LocalAddr()))
	}
}

// TestProxyV1Header: the v1 line for each kind of address pair.
func TestProxyV1Header(t *testing.T) {
	tcp := func(s string) net.Addr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	tests := []struct {
		src, dst net.Addr
		want     string
	}{
		{tcp("192.0.2.7:40001"), tcp("127.0.0.1:8443"), "PROXY TCP4 192.0.2.7 127.0.0.1 40001 8443\r\n"},
		{tcp("[2001:db8::7]:40001"), tcp("[::1]:8443"), "PROXY TCP6 2001:db8::7 ::1 40001 8443\r\n"},
		{tcp("192.0.2.7:40001"), tcp("[::1]:8443"), "PROXY TCP6 ::ffff:192.0.2.7 ::1 40001 8443\r\n"},
		{&net.UnixAddr{Name: "@", Net: "unix"}, tcp("127.0.0.1:8443"), "PROXY UNKNOWN\r\n"},
	}
	for _, tt := range tests {
		a, b := net.Pipe()
		got := make(chan []byte, 1)
		go func() { buf, _ := io.ReadAll(b); got <- buf }()
		if err := writeProxyHeader(a, 1, tt.src, tt.dst, time.Second); err != nil {
			t.Errorf("writeProxyHeader(1, %v, %v): %v", tt.src, tt.dst, err)
		}
		a.Close()
		if g := string(<-got); g != tt.want {
			t.Errorf("writeProxyHeader(1, %v, %v) wrote %q, want %q", tt.src, tt.dst, g, tt.want)
		}
		b.Close()
	}
}

// TestRouteProxyV2: a proxy-v2 route's backend first gets a PROXY v2
// header naming the client's address and the one it connected to, on a
// tunnel stream and on the raw path alike; other routes get no header.
func TestRouteProxyV2(t *testing.T) {
	pki := newTestPKI(t)
	pb := proxyBackend(t)
	r := startServer(t, pki, func(c *Config) {
		c.Routes = append(c.Routes, Route{Name: "pp", Target: pb, ProxyV2: true}, Route{Name: "plain", Target: pb})
		c.RawRoute = "pp"
	})
	s := dialSession(t, pki, r.addr)
	local := s.LocalAddr().String()
	st, err := openRoute(t, s, header(t, "pp"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := firstLine(t, st), local+" "+r.addr; got != want {
		t.Errorf("stream: backend saw PROXY header %q, want %q", got, want)
	}
	st2, err := openRoute(t, s, header(t, "plain"))
	if err != nil {
		t.Fatal(err)
	}
	st2.Write([]byte("hello\n")) // the backend looks for a header in the client's bytes
	if got := firstLine(t, st2); got != "no header" {
		t.Errorf("route without proxy-v2: backend saw %q, want no header", got)
	}
	raw := dialRaw(t, pki.clientTLS, r.addr)
	if got, want := firstLine(t, raw), raw.LocalAddr().String()+" "+r.addr; got != want {
		t.Errorf("raw: backend saw PROXY header %q, want %q", got, want)
	}
}

// startProxiedServer runs a server that trusts 127.0.0.1 as a PROXY
// upstream and allows only 192.0.2.7 (a client behind the balancer).
func startProxiedServer(t *testing.T, pki testPKI) *running {
	t.Helper()
	pb := proxyBackend(t)
	return startServer(t, pki, func(c *Config) {
		al, err := netfilter.ParseAllowlist([]string{"192.0.2.7/32"})
		if err != nil {
			t.Fatal(err)
		}
		c.Filter.SetAllowlist(al)
		up, err := netfilter.ParseAllowlist([]string{"127.0.0.1/32"})
		if err != nil {
			t.Fatal(err)
		}
		c.ProxyProtocolFrom = up
		c.ProxyHeaderTimeout = time.Second
		c.Routes = append(c.Routes, Route{Name: "pp", Target: pb, ProxyV2: true})
	})
}

// dialViaBalancer connects as a load balancer would: a PROXY header naming
// src, then TLS and yamux on the same connection.
func dialViaBalancer(t *testing.T, cfg *tls.Config, addr, src string, version byte) (*yamux.Session, error) {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	h := proxyproto.HeaderProxyFromAddrs(version, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)), raw.RemoteAddr())
	if _, err := h.WriteTo(raw); err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, cfg)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	tc.SetDeadline(time.Time{})
	ycfg := yamux.DefaultConfig()
	ycfg.LogOutput = io.Discard
	s, err := yamux.Client(tc, ycfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.Ping(); err != nil {
		return nil, err
	}
	return s, nil
}

// TestProxyProtocolFrom: behind a trusted upstream the allowlist, the
// session's peer, the logs and a proxy-v2 backend all see the address from
// the header; a header naming a client off the allowlist gets a reset; the
// upstream without a header gets a reset too.
func TestProxyProtocolFrom(t *testing.T) {
	pki := newTestPKI(t)
	r := startProxiedServer(t, pki)

	for _, v := range []byte{1, 2} {
		s, err := dialViaBalancer(t, pki.clientTLS, r.addr, "192.0.2.7:40001", v)
		if err != nil {
			t.Fatalf("v%d header naming an allowed client: %v", v, err)
		}
		st, err := openRoute(t, s, header(t, "pp"))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := firstLine(t, st), "192.0.2.7:40001 "; len(got) < len(want) || got[:len(want)] != want {
			t.Errorf("v%d: proxy-v2 backend saw %q, want source 192.0.2.7:40001", v, got)
		}
		s.Close()
	}
	waitFor(t, 5*time.Second, func() bool { return hasEntry(r.log, "event", "session_opened", "addr", "192.0.2.7:40001") })
	n := r.srv.Recheck("session_closed", func(p Peer) string {
		if p.Addr != netip.MustParseAddr("192.0.2.7") {
			return "wrong_addr"
		}
		return ""
	})
	if n != 0 {
		t.Errorf("a session's Peer.Addr is not the header's address")
	}

	if _, err := dialViaBalancer(t, pki.clientTLS, r.addr, "192.0.2.8:40002", 2); err == nil {
		t.Fatal("header naming a client off the allowlist: session opened")
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("header naming a client off the allowlist: %v, want a reset", err)
	}
	waitFor(t, 5*time.Second, func() bool {
		return hasEntry(r.log, "event", "conn_rejected", "reason", "ip_not_allowed", "addr", "192.0.2.8")
	})

	// The upstream itself speaking TLS with no header: a reset, and the
	// reason names the missing header.
	c, err := tls.Dial("tcp", r.addr, pki.clientTLS)
	if err == nil {
		c.Close()
		t.Fatal("a trusted upstream without a PROXY header completed a handshake")
	}
	waitFor(t, 5*time.Second, func() bool {
		return hasEntry(r.log, "event", "conn_rejected", "reason", netfilter.ReasonProxyHeader, "addr", "127.0.0.1")
	})
}
