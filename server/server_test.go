package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"go.uber.org/goleak"

	"github.com/tunnel-dev/tunnel/internal/devpki"
	"github.com/tunnel-dev/tunnel/internal/wire"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/trust"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testPKI is a CA with a server and a client certificate, in memory.
type testPKI struct {
	serverStore *trust.Store // what serverTLS reads
	serverTLS   *tls.Config
	clientTLS   *tls.Config // CN app1
	otherTLS    *tls.Config // CN app2, same CA
}

func newTestPKI(t testing.TB) testPKI {
	t.Helper()
	ca, err := devpki.NewCA("test CA", devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(cn string, eku x509.ExtKeyUsage) tls.Certificate {
		kp, err := devpki.NewLeaf(ca, &x509.Certificate{
			Subject:     pkix.Name{CommonName: cn},
			DNSNames:    []string{cn},
			NotBefore:   time.Now().Add(-time.Hour),
			NotAfter:    time.Now().Add(time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{eku},
		}, devpki.Options{})
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.X509KeyPair(kp.CertPEM, kp.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	srvStore := trust.NewStore(&trust.Material{Certificate: leaf("srv.test", x509.ExtKeyUsageServerAuth), CAPool: pool, CACerts: []*x509.Certificate{ca.Cert}})
	client := func(cn string) *tls.Config {
		st := trust.NewStore(&trust.Material{Certificate: leaf(cn, x509.ExtKeyUsageClientAuth), CAPool: pool, CACerts: []*x509.Certificate{ca.Cert}})
		return trust.ClientConfig(st, "srv.test", []string{trust.ALPNTunnel})
	}
	return testPKI{
		serverStore: srvStore,
		serverTLS:   trust.ServerConfig(srvStore, []string{trust.ALPNTunnel}),
		clientTLS:   client("app1"),
		otherTLS:    client("app2"),
	}
}

// echoBackend listens on loopback and echoes each connection until EOF.
func echoBackend(t *testing.T) string {
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
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

type running struct {
	srv  *Server
	addr string
	log  *logtest.Hook
	stop func() error // cancels Serve and returns its error
}

func startServer(t *testing.T, pki testPKI, mutate func(*Config)) *running {
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
	cfg := Config{
		Trust: pki.serverStore, Filter: f, Log: log,
		Routes: []Route{{Name: "echo", Target: echoBackend(t)}, {Name: "down", Target: closedPort(t)}},
	}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, ln) }()
	var once bool
	var serveErr error
	stop := func() error {
		if !once {
			once = true
			cancel()
			serveErr = <-errc
		}
		return serveErr
	}
	t.Cleanup(func() { stop() })
	return &running{srv: srv, addr: ln.Addr().String(), log: hook, stop: stop}
}

// dialSession opens a yamux client session to the server.
func dialSession(t *testing.T, pki testPKI, addr string) *yamux.Session {
	t.Helper()
	return dialSessionAs(t, pki.clientTLS, addr)
}

func dialSessionAs(t *testing.T, cfg *tls.Config, addr string) *yamux.Session {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ycfg := yamux.DefaultConfig()
	ycfg.LogOutput = io.Discard
	s, err := yamux.Client(c, ycfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// openRoute opens a stream, sends the header for route and returns the stream
// and the server's answer.
func openRoute(t *testing.T, s *yamux.Session, hdr []byte) (*yamux.Stream, error) {
	t.Helper()
	st, err := s.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.Write(hdr); err != nil {
		t.Fatal(err)
	}
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	return st, wire.ReadStatus(st)
}

func header(t *testing.T, route string) []byte {
	t.Helper()
	h, err := wire.AppendHeader(nil, route)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestStreamStatuses(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, nil)
	s := dialSession(t, pki, r.addr)

	tests := []struct {
		name string
		hdr  []byte
		want wire.Status
	}{
		{"ok", header(t, "echo"), wire.StatusOK},
		{"unknown route", header(t, "nope"), wire.StatusUnknownRoute},
		{"backend down", header(t, "down"), wire.StatusBackendUnreachable},
		{"bad version", []byte{9, 4, 'e', 'c', 'h', 'o'}, wire.StatusBadHeader},
		{"bad name", []byte{1, 2, 'a', '/'}, wire.StatusBadHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := openRoute(t, s, tt.hdr)
			got := wire.StatusOK
			if se, ok := errors.AsType[*wire.StatusError](err); ok {
				got = se.Code
			} else if err != nil {
				t.Fatalf("ReadStatus: %v", err)
			}
			if got != tt.want {
				t.Fatalf("status = %v, want %v", got, tt.want)
			}
		})
	}
	if got := r.srv.Stats().StreamsRefused; got["unknown_route"] != 1 || got["backend_unreachable"] != 1 || got["bad_header"] != 2 {
		t.Errorf("Stats().StreamsRefused = %v", got)
	}
}

// The client may send data right behind the header; it must reach the
// backend without waiting for the status.
func TestDataBehindHeader(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, nil)
	s := dialSession(t, pki, r.addr)
	st, err := s.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Write(append(header(t, "echo"), "hello"...)); err != nil {
		t.Fatal(err)
	}
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := wire.ReadStatus(st); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(st, got); err != nil || string(got) != "hello" {
		t.Fatalf("echo = %q, %v", got, err)
	}
}

func TestStreamCapPerSession(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, func(c *Config) { c.MaxStreamsPerSession = 2 })
	s := dialSession(t, pki, r.addr)
	for range 2 {
		if _, err := openRoute(t, s, header(t, "echo")); err != nil {
			t.Fatal(err)
		}
	}
	_, err := openRoute(t, s, header(t, "echo"))
	if se, ok := errors.AsType[*wire.StatusError](err); !ok || se.Code != wire.StatusOverLimit {
		t.Fatalf("third stream: %v, want over_limit", err)
	}
	// Another session is not affected by this one's streams.
	if _, err := openRoute(t, dialSession(t, pki, r.addr), header(t, "echo")); err != nil {
		t.Fatalf("other session: %v", err)
	}
}

func TestHeaderTimeout(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, func(c *Config) { c.HeaderTimeout = 200 * time.Millisecond })
	s := dialSession(t, pki, r.addr)
	st, err := s.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.Write([]byte{1}) // half a header, then silence
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	err = wire.ReadStatus(st)
	if se, ok := errors.AsType[*wire.StatusError](err); !ok || se.Code != wire.StatusBadHeader {
		t.Fatalf("status after a stalled header: %v, want bad_header", err)
	}
}

// On shutdown an open stream may finish within ShutdownTimeout; then Serve
// returns nil. New streams are refused by the GoAway.
func TestGracefulShutdown(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, func(c *Config) { c.ShutdownTimeout = 10 * time.Second })
	s := dialSession(t, pki, r.addr)
	st, err := openRoute(t, s, header(t, "echo"))
	if err != nil {
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- r.stop() }()
	waitFor(t, 5*time.Second, func() bool {
		_, err := s.OpenStream()
		return errors.Is(err, yamux.ErrRemoteGoAway)
	})
	// The open stream still works during the drain.
	msg := bytes.Repeat([]byte("x"), 1<<20)
	go st.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(st, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo during drain: %v", err)
	}
	select {
	case err := <-stopped:
		t.Fatalf("Serve returned %v while a stream was open", err)
	default:
	}
	st.Close()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("Serve = %v after a clean drain, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the last stream closed")
	}
}

func TestForcedShutdown(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, func(c *Config) { c.ShutdownTimeout = 100 * time.Millisecond })
	s := dialSession(t, pki, r.addr)
	if _, err := openRoute(t, s, header(t, "echo")); err != nil {
		t.Fatal(err)
	}
	if err := r.stop(); !errors.Is(err, ErrShutdownForced) {
		t.Fatalf("Serve = %v, want ErrShutdownForced", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	pki := newTestPKI(t)
	logger, _ := logtest.NewNullLogger()
	log := logrus.NewEntry(logger)
	al, _ := netfilter.ParseAllowlist([]string{"127.0.0.1"})
	f, err := netfilter.NewFilter(netfilter.FilterConfig{Allowlist: al, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	good := Config{TLS: pki.serverTLS, Filter: f, Log: log, Routes: []Route{{Name: "db", Target: "127.0.0.1:5432"}}}
	if _, err := New(good); err != nil {
		t.Fatalf("New(good) = %v", err)
	}
	tests := map[string]func(*Config){
		"no TLS":              func(c *Config) { c.TLS = nil },
		"no filter":           func(c *Config) { c.Filter = nil },
		"no log":              func(c *Config) { c.Log = nil },
		"no routes":           func(c *Config) { c.Routes = nil },
		"duplicate route":     func(c *Config) { c.Routes = append(c.Routes, c.Routes[0]) },
		"bad route target":    func(c *Config) { c.Routes = []Route{{Name: "db", Target: "nope"}} },
		"negative timeout":    func(c *Config) { c.DialTimeout = -time.Second },
		"negative handshake":  func(c *Config) { c.MaxHandshakes = -1 },
		"negative pending":    func(c *Config) { c.MaxPending = -1 },
		"negative first byte": func(c *Config) { c.FirstByteTimeout = -time.Second },
		"negative hello":      func(c *Config) { c.ClientHelloTimeout = -time.Second },
	}
	for name, mutate := range tests {
		cfg := good
		mutate(&cfg)
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%s) succeeded", name)
		}
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

// Recheck closes exactly the sessions the check refuses, with their streams,
// and logs the event with the reason.
func TestRecheck(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, nil)
	app1 := dialSessionAs(t, pki.clientTLS, r.addr)
	app2 := dialSessionAs(t, pki.otherTLS, r.addr)
	st1, err := openRoute(t, app1, header(t, "echo"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := openRoute(t, app2, header(t, "echo")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { return r.srv.Stats().SessionsActive == 2 })

	if n := r.srv.Recheck("session_revoked", func(p Peer) string { return "" }); n != 0 {
		t.Fatalf("Recheck(keep all) closed %d sessions", n)
	}
	n := r.srv.Recheck("session_revoked", func(p Peer) string {
		if p.Identity.CommonName == "app1" && len(p.Chains) > 0 && p.Addr.IsLoopback() {
			return "revoked"
		}
		return ""
	})
	if n != 1 {
		t.Fatalf("Recheck closed %d sessions, want 1", n)
	}
	// app1's open stream ends and its session is gone; app2 still works.
	st1.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := st1.Read(make([]byte, 1)); err == nil {
		t.Fatal("stream of a closed session still readable")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("stream of a closed session did not end")
	}
	waitFor(t, 5*time.Second, func() bool { return app1.IsClosed() })
	if _, err := openRoute(t, app2, header(t, "echo")); err != nil {
		t.Fatalf("untouched session: %v", err)
	}
	var logged bool
	for _, e := range r.log.AllEntries() {
		if e.Data["event"] == "session_revoked" && e.Data["reason"] == "revoked" && e.Data["identity_cn"] == "app1" {
			logged = true
		}
	}
	if !logged {
		t.Fatal("no session_revoked line for app1")
	}
}
