package client

import (
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tunnel-dev/tunnel/internal/wire"
	"github.com/tunnel-dev/tunnel/trust"
)

// deadAddr returns a loopback address nothing listens on (until a test
// listens there again).
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// tagServer is a fake tunnel server whose streams answer with its tag.
func tagServer(t *testing.T, pki testPKI, addr, tag string) *fakeServer {
	t.Helper()
	return newFakeServer(t, addr, serverTLS(pki), func(route string, st *yamux.Stream) {
		wire.WriteStatus(st, wire.StatusOK)
		io.WriteString(st, tag)
	})
}

// askTag connects to a forward and returns what the server behind it says.
func askTag(local string) string {
	c, err := net.Dial("tcp", local)
	if err != nil {
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(c)
	return string(b)
}

// TestFailover: with the first server down the client reaches the second
// at once, without the redial backoff (set to a minute here), and when the
// second goes away it moves back to the first.
func TestFailover(t *testing.T) {
	pki := newTestPKI(t)
	a := deadAddr(t)
	b := tagServer(t, pki, "127.0.0.1:0", "B")
	local, hook := startClient(t, pki, a, "db", func(c *Config) {
		c.Failover = []string{b.ln.Addr().String()}
		c.BackoffMin, c.BackoffMax = time.Minute, time.Minute
	})
	waitFor(t, 10*time.Second, func() bool { return askTag(local) == "B" })

	// A comes up where the client expects it; B dies (listener and session).
	fa := tagServer(t, pki, a, "A")
	b.close()
	waitFor(t, 10*time.Second, func() bool { return askTag(local) == "A" })
	if fa.sessions() != 1 {
		t.Errorf("server A accepted %d sessions, want 1", fa.sessions())
	}
	var failedOn []string
	for _, e := range hook.AllEntries() {
		if e.Data["event"] == "session_failed" {
			failedOn = append(failedOn, e.Data["addr"].(string))
		}
	}
	if len(failedOn) < 2 || failedOn[0] != a || failedOn[len(failedOn)-1] != b.ln.Addr().String() {
		t.Errorf("session_failed addrs = %v, want %s first and %s last", failedOn, a, b.ln.Addr())
	}
}

// TestRotation: the server list is walked from the last good one, and a
// round is over after every server failed once more.
func TestRotation(t *testing.T) {
	r := newRotation([]string{"a:1", "b:1", "c:1"})
	r.good(1)
	var got []string
	for failed := range 4 {
		_, addr := r.pick(r.first(), failed)
		got = append(got, addr)
	}
	if want := []string{"b:1", "c:1", "a:1", "b:1"}; !equal(got, want) {
		t.Errorf("pick order = %v, want %v", got, want)
	}
	for failed, want := range []bool{true, false, false, true} {
		if r.roundOver(failed) != want {
			t.Errorf("roundOver(%d) = %v, want %v", failed, !want, want)
		}
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// plainServer is a TLS echo server without ALPN (a stunnel server's shape)
// that records the peer address of each connection that carried bytes.
type plainServer struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	peers []net.Addr // guarded by mu
	alpn  []string   // negotiated protocols; guarded by mu
}

func newPlainServer(t *testing.T, pki testPKI) *plainServer {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", trust.ServerConfig(pki.server, nil))
	if err != nil {
		t.Fatal(err)
	}
	ps := &plainServer{ln: ln}
	ps.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ps.wg.Go(func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				if tc.Handshake() != nil {
					return
				}
				n, _ := io.Copy(c, c)
				if n > 0 { // not startClient's probe of the forward
					ps.mu.Lock()
					ps.peers = append(ps.peers, c.RemoteAddr())
					ps.alpn = append(ps.alpn, tc.ConnectionState().NegotiatedProtocol)
					ps.mu.Unlock()
				}
				tc.CloseWrite() // after recording: the client's EOF follows it
			})
		}
	})
	t.Cleanup(func() { ln.Close(); ps.wg.Wait() })
	return ps
}

// echoVia sends msg through the forward, half-closes and returns the echo.
func echoVia(t *testing.T, local, msg string) string {
	t.Helper()
	c, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, msg)
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("echo via %s: %v", local, err)
	}
	return string(b)
}

// TestRawMode: each local connection is its own plain TLS connection (no
// ALPN, no yamux, no header), from the Source address, failing over past a
// dead server.
func TestRawMode(t *testing.T) {
	pki := newTestPKI(t)
	ps := newPlainServer(t, pki)
	local, _ := startClient(t, pki, deadAddr(t), "svc", func(c *Config) {
		c.Raw = true
		c.Failover = []string{ps.ln.Addr().String()}
		c.Source = netip.MustParseAddr("127.0.0.2")
		c.TLS = func() *tls.Config { return trust.ClientConfig(pki.client, "srv.test", nil) }
	})
	for _, msg := range []string{"first", "second"} {
		if got := echoVia(t, local, msg); got != msg {
			t.Fatalf("raw echo = %q, want %q", got, msg)
		}
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if len(ps.peers) != 2 {
		t.Fatalf("server saw %d TLS connections with data, want one per local connection (2)", len(ps.peers))
	}
	for i, p := range ps.peers {
		if ip := p.(*net.TCPAddr).IP.String(); ip != "127.0.0.2" {
			t.Errorf("connection %d came from %s, want Source 127.0.0.2", i, ip)
		}
		if ps.alpn[i] != "" {
			t.Errorf("connection %d negotiated ALPN %q, want none", i, ps.alpn[i])
		}
	}
}
