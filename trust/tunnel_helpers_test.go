package trust_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/tunnel-dev/tunnel/client"
	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/server"
	"github.com/tunnel-dev/tunnel/trust"
)

// These helpers run a real tunnel session in-process: the server and client
// packages (TLS from trust.ServerConfig and trust.ClientConfig, yamux, the
// stream header, an echo backend), so the identity and revocation tests see
// what the binary will do once its flags reach this code. The end-to-end
// tests of package e2e run the binary itself.

// echoBackend is a TCP echo server on 127.0.0.1.
func echoBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// tunnelServer is a running server.Server with one route, "echo".
type tunnelServer struct {
	srv    *server.Server
	addr   string
	store  *trust.Store
	routes []server.Route
	allow  *netfilter.Allowlist
	log    *logtest.Hook
}

// startTunnelServer serves store's material on 127.0.0.1 with opts; access,
// if set, is the echo route's rules.
func startTunnelServer(t *testing.T, store *trust.Store, access *server.Access, opts ...trust.ConfigOption) *tunnelServer {
	t.Helper()
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	log := logrus.NewEntry(logger)
	al, err := netfilter.ParseAllowlist([]string{"127.0.0.1/32"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := netfilter.NewFilter(netfilter.FilterConfig{Allowlist: al, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	routes := []server.Route{{Name: "echo", Target: echoBackend(t), Access: access}}
	srv, err := server.New(server.Config{TLS: trust.ServerConfig(store, []string{trust.ALPNTunnel}, opts...),
		Trust: store, Filter: f, Routes: routes, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return &tunnelServer{srv: srv, addr: ln.Addr().String(), store: store, routes: routes, allow: al, log: hook}
}

// swap applies material m as a reload does: sessions that m's CA bundle no
// longer verifies are closed (session_revoked, ca_removed), then new
// handshakes get m. It returns how many sessions it closed.
func (ts *tunnelServer) swap(t *testing.T, m *trust.Material) int {
	t.Helper()
	n, err := ts.srv.Reload(server.State{Material: m, Allowlist: ts.allow, Routes: ts.routes})
	if err != nil {
		t.Error(err)
	}
	return n
}

// follow keeps ts on src's material until the test ends, as the wiring
// will: trust.Follow with swap.
func (ts *tunnelServer) follow(t *testing.T, src trust.Source) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { trust.Follow(ctx, src, func(m *trust.Material) { ts.swap(t, m) }) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}

// events returns the log entries with event name ev.
func events(h *logtest.Hook, ev string) []*logrus.Entry {
	var out []*logrus.Entry
	for _, e := range h.AllEntries() {
		if e.Data[audit.Event] == ev {
			out = append(out, e)
		}
	}
	return out
}

// waitEvent waits up to d for a log entry with event ev and reason.
func waitEvent(h *logtest.Hook, ev, reason string, d time.Duration) bool {
	return waitUntil(d, func() bool {
		for _, e := range events(h, ev) {
			if e.Data[audit.Reason] == reason {
				return true
			}
		}
		return false
	})
}

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// tunnelClient is a running client.Client with one forward to "echo".
type tunnelClient struct {
	c     *client.Client
	local string
	log   *logtest.Hook
}

// startTunnelClient dials addr with the configs tlsFn returns and forwards
// a local port to the route "echo".
func startTunnelClient(t *testing.T, addr string, tlsFn func() *tls.Config) *tunnelClient {
	t.Helper()
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	local := freeAddr(t)
	c, err := client.New(client.Config{Server: addr, TLS: tlsFn, Forwards: []client.Forward{{Listen: local, Route: "echo"}},
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, Log: logrus.NewEntry(logger)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return &tunnelClient{c: c, local: local, log: hook}
}

// roundTrip sends n random bytes through local and reads them back; it
// returns an error if the connection fails or the SHA-256 differs.
func roundTrip(local string, n int, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", local, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	data := make([]byte, n)
	_, _ = rand.Read(data)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		errc <- err
	}()
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if err := <-errc; err != nil {
		return err
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		return errors.New("SHA-256 of the echoed bytes differs")
	}
	return nil
}

// waitRoundTrip retries roundTrip until it succeeds or d passes (the client
// may still be dialling), and returns the last error.
func waitRoundTrip(local string, n int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		err := roundTrip(local, n, 5*time.Second)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// liveTransfer is one connection through the tunnel that keeps moving data
// until stopped, checking every byte.
type liveTransfer struct {
	conn    net.Conn
	sent    sync.WaitGroup
	stop    chan struct{}
	mu      sync.Mutex
	sum     [2][]byte // SHA-256 of what was sent and what came back, at the end
	n       int64     // bytes echoed
	readErr error
}

// startLive opens a connection through local and streams random data in
// 32 KiB chunks until Finish.
func startLive(t *testing.T, local string) *liveTransfer {
	t.Helper()
	c, err := net.DialTimeout("tcp", local, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lt := &liveTransfer{conn: c, stop: make(chan struct{})}
	hw, hr := sha256.New(), sha256.New()
	lt.sent.Go(func() {
		buf := make([]byte, 32<<10)
		for {
			select {
			case <-lt.stop:
				lt.mu.Lock()
				lt.sum[0] = hw.Sum(nil)
				lt.mu.Unlock()
				_ = c.(*net.TCPConn).CloseWrite()
				return
			default:
			}
			_, _ = rand.Read(buf)
			hw.Write(buf)
			if _, err := c.Write(buf); err != nil {
				return
			}
			time.Sleep(2 * time.Millisecond) // a steady stream, not a flood
		}
	})
	lt.sent.Go(func() {
		n, err := io.Copy(hr, c)
		lt.mu.Lock()
		lt.n, lt.readErr, lt.sum[1] = n, err, hr.Sum(nil)
		lt.mu.Unlock()
	})
	t.Cleanup(func() { c.Close() })
	return lt
}

// finish stops sending, waits for the echo of everything sent, and returns
// how many bytes came back, whether their SHA-256 is that of what was sent,
// and the read error if the connection failed.
func (lt *liveTransfer) finish() (int64, bool, error) {
	close(lt.stop)
	lt.conn.SetDeadline(time.Now().Add(30 * time.Second))
	lt.sent.Wait()
	lt.mu.Lock()
	defer lt.mu.Unlock()
	return lt.n, lt.readErr == nil && lt.sum[0] != nil && bytes.Equal(lt.sum[0], lt.sum[1]), lt.readErr
}

// dialVerdict dials addr and waits for the server's verdict (under TLS 1.3 a
// refused client learns it on its first read).
func dialVerdict(addr string, cfg *tls.Config) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(time.Second))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil // no alert: admitted
	}
	return err
}
