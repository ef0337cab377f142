package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"go.uber.org/goleak"

	"github.com/tunnel-dev/tunnel/internal/devpki"
	"github.com/tunnel-dev/tunnel/internal/wire"
	"github.com/tunnel-dev/tunnel/trust"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeServer is a minimal tunnel server: TLS with ALPN tunnel/1, a yamux
// session, and per stream a handler that gets the stream after its header.
type fakeServer struct {
	ln      net.Listener
	handle  func(route string, st *yamux.Stream)
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn // guarded by mu
	accepts int        // sessions accepted; guarded by mu
}

func newFakeServer(t *testing.T, addr string, cfg *tls.Config, handle func(string, *yamux.Stream)) *fakeServer {
	t.Helper()
	ln, err := tls.Listen("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	fs := &fakeServer{ln: ln, handle: handle}
	fs.wg.Go(fs.serve)
	t.Cleanup(fs.close)
	return fs
}

func (fs *fakeServer) serve() {
	for {
		c, err := fs.ln.Accept()
		if err != nil {
			return
		}
		fs.mu.Lock()
		fs.conns = append(fs.conns, c)
		fs.accepts++
		fs.mu.Unlock()
		fs.wg.Go(func() {
			ycfg := yamux.DefaultConfig()
			ycfg.LogOutput = io.Discard
			s, err := yamux.Server(c, ycfg)
			if err != nil {
				return
			}
			defer s.Close()
			for {
				st, err := s.AcceptStream()
				if err != nil {
					return
				}
				fs.wg.Go(func() {
					defer st.Close()
					route, err := wire.ReadHeader(st)
					if err != nil {
						wire.WriteStatus(st, wire.StatusBadHeader)
						return
					}
					fs.handle(route, st)
				})
			}
		})
	}
}

// dropSessions closes every connection, as a server crash would.
func (fs *fakeServer) dropSessions() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, c := range fs.conns {
		c.Close()
	}
	fs.conns = nil
}

func (fs *fakeServer) sessions() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.accepts
}

func (fs *fakeServer) close() {
	fs.ln.Close()
	fs.dropSessions()
	fs.wg.Wait()
}

type testPKI struct{ server, client *trust.Store }

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	ca, err := devpki.NewCA("test CA", devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	store := func(cn string, eku x509.ExtKeyUsage) *trust.Store {
		kp, err := devpki.NewLeaf(ca, &x509.Certificate{
			Subject: pkix.Name{CommonName: cn}, DNSNames: []string{cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{eku},
		}, devpki.Options{})
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.X509KeyPair(kp.CertPEM, kp.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return trust.NewStore(&trust.Material{Certificate: c, CAPool: pool, CACerts: []*x509.Certificate{ca.Cert}})
	}
	return testPKI{server: store("srv.test", x509.ExtKeyUsageServerAuth), client: store("app1", x509.ExtKeyUsageClientAuth)}
}

// startClient runs a Client with one forward to route and returns its
// local address (bound before Run starts serving).
func startClient(t *testing.T, pki testPKI, server, route string, mutate func(*Config)) (string, *logtest.Hook) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	local := ln.Addr().String()
	ln.Close()
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	cfg := Config{
		Server:     server,
		TLS:        func() *tls.Config { return trust.ClientConfig(pki.client, "srv.test", []string{trust.ALPNTunnel}) },
		Forwards:   []Forward{{Listen: local, Route: route}},
		BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		Log: logrus.NewEntry(logger),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	waitFor(t, 5*time.Second, func() bool {
		c, err := net.Dial("tcp", local)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return local, hook
}

func serverTLS(pki testPKI) *tls.Config {
	return trust.ServerConfig(pki.server, []string{trust.ALPNTunnel})
}

// The local side's first bytes go out behind the header before the status
// comes back: this fake server answers only after it has read them.
func TestDataBeforeStatus(t *testing.T) {
	pki := newTestPKI(t)
	fs := newFakeServer(t, "127.0.0.1:0", serverTLS(pki), func(route string, st *yamux.Stream) {
		buf := make([]byte, 5)
		if _, err := io.ReadFull(st, buf); err != nil {
			return
		}
		wire.WriteStatus(st, wire.StatusOK)
		st.Write(append([]byte(route+":"), buf...))
	})
	local, _ := startClient(t, pki, fs.ln.Addr().String(), "db", nil)
	c, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, 8)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "db:hello" {
		t.Fatalf("got %q, %v; want %q", got, err, "db:hello")
	}
}

func TestRefusedStreamClosesLocalConn(t *testing.T) {
	pki := newTestPKI(t)
	fs := newFakeServer(t, "127.0.0.1:0", serverTLS(pki), func(route string, st *yamux.Stream) {
		wire.WriteStatus(st, wire.StatusUnknownRoute)
	})
	local, hook := startClient(t, pki, fs.ln.Addr().String(), "nope", nil)
	c, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes from a refused stream", n)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("local connection not closed after the refusal")
	}
	waitFor(t, 5*time.Second, func() bool {
		for _, e := range hook.AllEntries() {
			if e.Data["event"] == "stream_refused" && e.Data["status"] == "unknown_route" {
				return true
			}
		}
		return false
	})
}

// When the server drops the session, the keeper redials by itself and a new
// local connection works.
func TestReconnect(t *testing.T) {
	pki := newTestPKI(t)
	echo := func(route string, st *yamux.Stream) {
		wire.WriteStatus(st, wire.StatusOK)
		io.Copy(st, st)
	}
	fs := newFakeServer(t, "127.0.0.1:0", serverTLS(pki), echo)
	local, _ := startClient(t, pki, fs.ln.Addr().String(), "echo", nil)
	roundTrip := func() error {
		c, err := net.Dial("tcp", local)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		b := make([]byte, 4)
		if _, err := io.ReadFull(c, b); err != nil {
			return err
		}
		if string(b) != "ping" {
			return errors.New("bad echo")
		}
		return nil
	}
	if err := roundTrip(); err != nil {
		t.Fatal(err)
	}
	fs.dropSessions()
	waitFor(t, 10*time.Second, func() bool { return fs.sessions() >= 2 })
	if err := roundTrip(); err != nil {
		t.Fatalf("after reconnect: %v", err)
	}
}

// A local connection that arrives while the server is unreachable waits up
// to ConnectTimeout, then is closed with a logged reason.
func TestConnectTimeoutWhileDown(t *testing.T) {
	pki := newTestPKI(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	local, hook := startClient(t, pki, dead, "db", func(c *Config) { c.ConnectTimeout = 300 * time.Millisecond })
	c, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read succeeded with no server")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("local connection closed after %v, want about 300ms", d)
	}
	waitFor(t, 5*time.Second, func() bool {
		for _, e := range hook.AllEntries() {
			if e.Data["reason"] == "session_unavailable" {
				return true
			}
		}
		return false
	})
}

func TestForwardPortTaken(t *testing.T) {
	pki := newTestPKI(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	logger, _ := logtest.NewNullLogger()
	c, err := New(Config{
		Server:   "127.0.0.1:1",
		TLS:      func() *tls.Config { return trust.ClientConfig(pki.client, "srv.test", nil) },
		Forwards: []Forward{{Listen: ln.Addr().String(), Route: "db"}},
		Log:      logrus.NewEntry(logger),
	})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Run(context.Background())
	var le *ListenError
	if !errors.As(err, &le) || le.Forward.Listen != ln.Addr().String() {
		t.Fatalf("Run = %v, want *ListenError for %s", err, ln.Addr())
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}
