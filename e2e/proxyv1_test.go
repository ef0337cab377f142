package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proxySeen is what a PROXY-reading backend saw on one connection: the
// header's source and destination, and the SHA-256 and length of the bytes
// after it (which it also echoes).
type proxySeen struct {
	src, dst string
	sum      [32]byte
	n        int64
	err      error
}

// proxyEchoBackend runs a backend that reads a PROXY header with parse,
// then echoes the rest while hashing it, and reports each connection.
func proxyEchoBackend(t *testing.T, parse func(*bufio.Reader) (src, dst string, err error)) (string, <-chan proxySeen) {
	t.Helper()
	seen := make(chan proxySeen, 4)
	addr := startBackend(t, func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(waitTimeout))
		br := bufio.NewReader(c)
		var s proxySeen
		if s.src, s.dst, s.err = parse(br); s.err != nil {
			seen <- s
			return
		}
		h := sha256.New()
		s.n, s.err = io.Copy(io.MultiWriter(c, h), br)
		s.sum = [32]byte(h.Sum(nil))
		c.CloseWrite()
		seen <- s
	})
	return addr, seen
}

// parseV1 reads a PROXY protocol v1 line as the specification (and
// stunnel's peers) have it, strictly: at most 107 bytes ending in CRLF,
// "PROXY TCP4|TCP6 SRC DST SPORT DPORT", addresses of the family named,
// ports in decimal without leading zeros.
func parseV1(br *bufio.Reader) (src, dst string, err error) {
	var line []byte
	for len(line) < 107 {
		b, err := br.ReadByte()
		if err != nil {
			return "", "", fmt.Errorf("v1 header: %w after %q", err, line)
		}
		line = append(line, b)
		if bytes.HasSuffix(line, []byte("\r\n")) {
			break
		}
	}
	if !bytes.HasSuffix(line, []byte("\r\n")) {
		return "", "", fmt.Errorf("v1 header: no CRLF in the first 107 bytes: %q", line)
	}
	f := strings.Split(string(line[:len(line)-2]), " ")
	if len(f) != 6 || f[0] != "PROXY" || (f[1] != "TCP4" && f[1] != "TCP6") {
		return "", "", fmt.Errorf("v1 header: %q is not PROXY TCP4|TCP6 SRC DST SPORT DPORT", line)
	}
	for _, a := range f[2:4] {
		ip := net.ParseIP(a)
		if ip == nil || (f[1] == "TCP4") != (ip.To4() != nil && !strings.Contains(a, ":")) {
			return "", "", fmt.Errorf("v1 header: %q: address %q is not %s", line, a, f[1])
		}
	}
	for _, p := range f[4:6] {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 65535 || strconv.Itoa(n) != p {
			return "", "", fmt.Errorf("v1 header: %q: port %q", line, p)
		}
	}
	return net.JoinHostPort(f[2], f[4]), net.JoinHostPort(f[3], f[5]), nil
}

// parseV2TCP4 reads a PROXY protocol v2 PROXY header for TCP over IPv4.
func parseV2TCP4(br *bufio.Reader) (src, dst string, err error) {
	hdr := make([]byte, 28)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return "", "", fmt.Errorf("v2 header: %w", err)
	}
	if string(hdr[:12]) != "\r\n\r\n\x00\r\nQUIT\n" || hdr[12] != 0x21 || hdr[13] != 0x11 || hdr[14] != 0 || hdr[15] != 12 {
		return "", "", fmt.Errorf("v2 header: % x is not a TCP4 PROXY header", hdr[:16])
	}
	port := func(b []byte) string { return strconv.Itoa(int(b[0])<<8 | int(b[1])) }
	return net.JoinHostPort(net.IP(hdr[16:20]).String(), port(hdr[24:26])),
		net.JoinHostPort(net.IP(hdr[20:24]).String(), port(hdr[26:28])), nil
}

// proxyTransfer sends n bytes from seed through the client forward fwd to a
// backend reporting on seen, and checks that the backend got exactly them
// after the header, that they came back, and that the header named the
// client's address as the server logged it (from 127.0.0.2) and the server's
// listener. It returns what the backend saw.
func proxyTransfer(t *testing.T, srv *proc, fwd string, seen <-chan proxySeen, seed uint64, n int64) proxySeen {
	t.Helper()
	c := dialLocal(t, fwd)
	c.SetDeadline(time.Now().Add(waitTimeout))
	var (
		sent [32]byte
		werr error
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		sent, _, werr = sendHashed(c, seed, n)
		c.CloseWrite()
	})
	got, m, rerr := recvHashed(c)
	wg.Wait()
	if werr != nil || rerr != nil {
		t.Fatalf("through %s: write error %v, read error %v", fwd, werr, rerr)
	}
	var s proxySeen
	select {
	case s = <-seen:
	case <-time.After(waitTimeout):
		t.Fatal("the backend reported nothing")
	}
	if s.err != nil {
		t.Fatalf("backend: %v", s.err)
	}
	if s.n != n || s.sum != sent || m != n || got != sent {
		t.Fatalf("backend got %d bytes after the header (sha256 equal %v), client got %d back (sha256 equal %v); sent %d",
			s.n, s.sum == sent, m, got == sent, n)
	}
	ev := srv.waitEvent(t, waitTimeout, "stream_closed", isEvent("stream_closed"))
	if ev["addr"] != s.src {
		t.Errorf("the header's source is %s, the server logged the client as %v", s.src, ev["addr"])
	}
	if !strings.HasPrefix(s.src, "127.0.0.2:") {
		t.Errorf("the header's source is %s, want the client's address 127.0.0.2:PORT", s.src)
	}
	if s.dst != srv.addr(t) {
		t.Errorf("the header's destination is %s, want the server's listener %s", s.dst, srv.addr(t))
	}
	return s
}

// proxyV1Pair starts a server whose route "v1" sends PROXY v1 to backend,
// and a client from 127.0.0.2, so the header's source differs from the
// address the server dials the backend from.
func proxyV1Pair(t *testing.T, backend string) (srv *proc, fwd string) {
	t.Helper()
	pk := pkiDir(t)
	srv = startProc(t, serverArgsFrom(pk, "127.0.0.1:0", "127.0.0.2/32", "v1="+backend+",proxy-v1")...)
	cli := startProc(t, append(clientArgs(pk, srv.addr(t), "v1"), "--source", "127.0.0.2")...)
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	return srv, cli.forwardAddr(t, "v1")
}

// TestRouteProxyV1Binary: a --route with ,proxy-v1 gives the backend the
// PROXY v1 line, as a strict parser reads it, naming the client and the
// server's listener, then the client's bytes unchanged (1 MiB by SHA-256).
func TestRouteProxyV1Binary(t *testing.T) {
	t.Parallel()
	backend, seen := proxyEchoBackend(t, parseV1)
	srv, fwd := proxyV1Pair(t, backend)
	s := proxyTransfer(t, srv, fwd, seen, 17, 1<<20)
	t.Logf("v1 backend saw source %s, destination %s, then %d bytes", s.src, s.dst, s.n)
}

// TestRouteProxyV1HAProxy: HAProxy as the real peer. Its frontend has
// accept-proxy, so it takes the tunnel server's PROXY v1 line (it closes a
// connection whose header it cannot parse) and passes the address it read
// on to its own backend as PROXY v2 (send-proxy-v2): the address arrives
// only if HAProxy understood our v1 line.
func TestRouteProxyV1HAProxy(t *testing.T) {
	t.Parallel()
	bin := requireTool(t, "haproxy", "/usr/sbin/haproxy")
	backend, seen := proxyEchoBackend(t, parseV2TCP4)
	front := freeAddr(t, "127.0.0.1")
	cfg := fmt.Sprintf(`
global
    maxconn 64
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend from_tunnel
    bind %s accept-proxy
    default_backend to_app
backend to_app
    server app %s send-proxy-v2
`, front, backend)
	hp := startExt(t, bin, "-db", "-f", writeFile(t, t.TempDir(), "haproxy.cfg", cfg))
	waitListening(t, hp, front)
	// waitListening's probe connection sent no header: HAProxy drops it
	// without reaching the backend.

	srv, fwd := proxyV1Pair(t, front)
	s := proxyTransfer(t, srv, fwd, seen, 18, 1<<20)
	t.Logf("through HAProxy (accept-proxy, then send-proxy-v2): backend saw source %s, destination %s, then %d bytes", s.src, s.dst, s.n)

	// Without the v1 line HAProxy refuses the connection: the header is
	// what it accepted above, not something it ignores.
	c, err := net.DialTimeout("tcp", front, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitTimeout))
	c.Write([]byte("no PROXY header here\r\n"))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("HAProxy answered a connection without a PROXY header: %v", err)
	}
	select {
	case s := <-seen:
		t.Errorf("HAProxy passed a connection without a PROXY header to its backend: %+v", s)
	case <-time.After(500 * time.Millisecond): // a pass would show by now; not synchronisation
	}
}
