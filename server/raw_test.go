package server

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	logtest "github.com/sirupsen/logrus/hooks/test"
)

// plainTLS is cfg without ALPN: what stunnel or openssl s_client offer.
func plainTLS(cfg *tls.Config) *tls.Config {
	c := cfg.Clone()
	c.NextProtos = nil
	return c
}

// dialRaw completes a plain TLS handshake with the server and closes the
// connection at cleanup.
func dialRaw(t *testing.T, cfg *tls.Config, addr string) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, plainTLS(cfg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// hasEntry reports whether the log has a line with all of kv as fields; an
// "addr" given without a port matches the host of the line's host:port.
func hasEntry(h *logtest.Hook, kv ...string) bool {
	for _, e := range h.AllEntries() {
		ok := true
		for i := 0; i+1 < len(kv); i += 2 {
			s, _ := e.Data[kv[i]].(string)
			if host, _, err := net.SplitHostPort(s); kv[i] == "addr" && err == nil && !strings.Contains(kv[i+1], ":") {
				s = host // "addr", "127.0.0.1": the host of a host:port
			}
			if s != kv[i+1] {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// TestRawRoute: a client that offers no ALPN is carried to the raw route
// byte for byte, with the same audit lines as a tunnel session.
func TestRawRoute(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, func(c *Config) { c.RawRoute = "echo" })
	c := dialRaw(t, pki.clientTLS, r.addr)
	msg := bytes.Repeat([]byte("raw bytes "), 10000)
	go func() {
		c.Write(msg)
		c.CloseWrite() // close_notify: the server half-closes the backend
	}()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, msg) {
		for _, e := range r.log.AllEntries() {
			t.Logf("server log: %s %v", e.Message, e.Data)
		}
		t.Fatalf("echo through the raw route: %d bytes, %v; want %d bytes back", len(got), err, len(msg))
	}
	c.Close()
	waitFor(t, 5*time.Second, func() bool {
		return hasEntry(r.log, "event", "session_closed", "mode", ModeRaw, "identity_cn", "app1") &&
			r.srv.Stats().StreamsActive == 0 // counted down after the line
	})
	for _, kv := range [][]string{
		{"event", "session_opened", "mode", ModeRaw, "route", "echo", "identity_cn", "app1"},
		{"event", "stream_closed", "route", "echo", "identity_cn", "app1"},
	} {
		if !hasEntry(r.log, kv...) {
			t.Errorf("no log line with %v", kv)
		}
	}
	if st := r.srv.Stats(); st.StreamsActive != 0 || st.StreamsTotal != 1 {
		t.Errorf("Stats = %+v, want 1 stream in all, none open", st)
	}
}

// TestNoRawRouteRefusesPlainTLS: without a raw route the plain client is
// closed after its handshake, and the reason is logged.
func TestNoRawRouteRefusesPlainTLS(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, nil)
	c := dialRaw(t, pki.clientTLS, r.addr)
	c.Write([]byte("hello"))
	n, err := io.Copy(io.Discard, c)
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		t.Fatal("plain client without a raw route still open")
	}
	if n != 0 {
		t.Fatalf("refused plain client read %d bytes", n)
	}
	waitFor(t, 5*time.Second, func() bool { return hasEntry(r.log, "event", "conn_rejected", "reason", "no_alpn") })
}

// TestRawBackendDown: the raw client's connection is closed, nothing sent,
// and the refusal logged with the backend status name.
func TestRawBackendDown(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, func(c *Config) { c.RawRoute = "down" })
	c := dialRaw(t, pki.clientTLS, r.addr)
	if n, _ := io.Copy(io.Discard, c); n != 0 {
		t.Fatalf("read %d bytes from a raw conn whose backend is down", n)
	}
	waitFor(t, 5*time.Second, func() bool {
		return hasEntry(r.log, "event", "stream_refused", "status", "backend_unreachable", "route", "down")
	})
}

// TestRecheckClosesRawConn: Recheck (revocation, allowlist reload) reaches
// plain TLS clients too.
func TestRecheckClosesRawConn(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, func(c *Config) { c.RawRoute = "echo" })
	c := dialRaw(t, pki.clientTLS, r.addr)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	n := r.srv.Recheck("session_revoked", func(p Peer) string {
		if p.Identity.CommonName == "app1" {
			return "revoked"
		}
		return ""
	})
	if n != 1 {
		t.Fatalf("Recheck closed %d, want the raw connection", n)
	}
	_, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("raw connection still open after Recheck refused it")
	}
	if !hasEntry(r.log, "event", "session_revoked", "reason", "revoked", "mode", ModeRaw) {
		t.Error("no session_revoked line for the raw connection")
	}
}

// TestRawRouteMustExist: New refuses a RawRoute that names no route.
func TestRawRouteMustExist(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, nil)
	cfg := r.srv.cfg
	cfg.RawRoute = "nope"
	if _, err := New(cfg); err == nil {
		t.Fatal("New accepted RawRoute naming no route")
	}
}

// A handshake that resumes a TLS session is counted as such, beside the
// full ones.
func TestResumedHandshakesCounted(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, func(c *Config) { c.RawRoute = "echo" })
	cfg := plainTLS(pki.clientTLS)
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	for i := range 2 {
		c, err := tls.Dial("tcp", r.addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte("x"))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil { // reads the session ticket too
			t.Fatal(err)
		}
		if resumed := c.ConnectionState().DidResume; resumed != (i == 1) {
			t.Fatalf("handshake %d resumed: %v", i+1, resumed)
		}
		c.Close()
	}
	waitFor(t, 5*time.Second, func() bool {
		st := r.srv.Stats()
		return st.HandshakesOK == 2 && st.HandshakesResumed == 1
	})
}
