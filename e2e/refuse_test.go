package e2e

import (
	"cmp"
	"crypto/x509"
	"errors"
	"net"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestAllowlistResetsUnlistedPeer connects from 127.0.0.2 to a server that
// allows only 127.0.0.1/32: the connection is reset before any byte, the
// server logs conn_rejected, and it never starts a handshake for it.
func TestAllowlistResetsUnlistedPeer(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	srv, cli := tunnelPair(t, pk, map[string]string{"echo": echoBackend(t)})
	addr := srv.addr(t)

	// Send nothing: a plain close would give EOF, only SO_LINGER 0 gives a
	// reset. The reset can beat connect's own completion check, so it may
	// surface from Dial rather than from Read.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
	c, err := d.DialContext(t.Context(), "tcp", addr)
	if err == nil {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(waitTimeout))
		var n int
		n, err = c.Read(make([]byte, 1))
		if n > 0 {
			t.Errorf("read %d bytes from a rejected connection", n)
		}
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("connection from 127.0.0.2 ended with %v; want ECONNRESET", err)
	}
	srv.waitEvent(t, waitTimeout, "conn_rejected for 127.0.0.2",
		isEvent("conn_rejected", "reason", "ip_not_allowed", "addr", "127.0.0.2"))

	// The allowed client is still served after the rejection.
	echoCheck(t, cli.forwardAddr(t, "echo"), 40, 4096)

	fromRejected := func(ev map[string]any) bool {
		a, _ := ev["addr"].(string)
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			host = a
		}
		return host == "127.0.0.2" && ev["event"] != "conn_rejected"
	}
	for _, ev := range srv.matching(fromRejected) {
		t.Errorf("server logged %v for the rejected peer: %v", ev["event"], ev)
	}
}

// TestRefusedCertificates checks that the server and the client each refuse
// a peer certificate they must not accept, log why, and never open a
// session; the local connection is closed.
func TestRefusedCertificates(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	other := pkiDir(t) // a second, unrelated CA
	srvOnlyCert, srvOnlyKey := pk.issue(t, "--server", "srv-only", "--dns", "srv-only.test")
	if c := readCert(t, srvOnlyCert); slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth) || len(c.ExtKeyUsage) == 0 {
		t.Fatalf("precondition: a --server certificate must carry serverAuth without clientAuth; EKU = %v", c.ExtKeyUsage)
	}
	backend := echoBackend(t)

	for _, tc := range []struct {
		name         string
		cert, key    string
		serverName   string
		serverReason string // exact, or "" for any non-empty reason
		clientReason string // a substring of the client's session_failed reason
	}{
		{"client cert from another CA", other.clientCert, other.clientKey, "localhost", "unknown_authority", ""},
		{"client cert without clientAuth", srvOnlyCert, srvOnlyKey, "localhost", "bad_eku", ""},
		{"server name mismatch", pk.clientCert, pk.clientKey, "wrong.example", "", "name_mismatch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := startProc(t, serverArgs(pk, "127.0.0.1:0", "echo="+backend)...)
			args := clientArgs(pk, srv.addr(t), "echo")
			args = withFlag(args, "--cert", tc.cert)
			args = withFlag(args, "--key", tc.key)
			args = withFlag(args, "--server-name", tc.serverName)
			args = withFlag(args, "--connect-timeout", "2s")
			cli := startProc(t, args...)

			hf := srv.waitEvent(t, waitTimeout, "handshake_failed", isEvent("handshake_failed"))
			if r, _ := hf["reason"].(string); r == "" || (tc.serverReason != "" && r != tc.serverReason) {
				t.Errorf("server handshake_failed reason = %q, want %q", r, cmp.Or(tc.serverReason, "a reason"))
			}
			// The client's first verdict on the session: failed, or
			// (wrongly) opened.
			first := cli.waitEvent(t, waitTimeout, "session_failed or session_opened", func(ev map[string]any) bool {
				return isEvent("session_failed")(ev) || isEvent("session_opened")(ev)
			})
			if first["event"] != "session_failed" {
				t.Fatalf("client logged %v before any session_failed though the server refused it: %v", first["event"], first)
			}
			if r, _ := first["reason"].(string); r == "" || !strings.Contains(r, tc.clientReason) {
				t.Errorf("client session_failed reason = %q, want one containing %q", r, tc.clientReason)
			}

			c := dialLocal(t, cli.forwardAddr(t, "echo"))
			c.Write([]byte("hello"))
			assertClosed(t, c, waitTimeout)

			for _, p := range []*proc{srv, cli} {
				for _, ev := range p.matching(isEvent("session_opened")) {
					t.Errorf("%s logged session_opened with a refused certificate: %v", p.name, ev)
				}
			}
		})
	}
}

// TestStreamRefusals checks that a stream to a route the server lacks and
// a stream to a backend that is down each close the local connection and
// are logged with their status on both sides.
func TestStreamRefusals(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := ln.Addr().String()
	ln.Close() // nothing listens there any more

	srv := startProc(t, serverArgs(pk, "127.0.0.1:0", "echo="+echoBackend(t), "down="+down)...)
	cli := startProc(t, clientArgs(pk, srv.addr(t), "nosuch", "down", "echo")...)
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))

	for _, tc := range []struct{ route, status string }{
		{"nosuch", "unknown_route"},
		{"down", "backend_unreachable"},
	} {
		t.Run(tc.route, func(t *testing.T) {
			c := dialLocal(t, cli.forwardAddr(t, tc.route))
			c.Write([]byte("hello"))
			assertClosed(t, c, waitTimeout)
			srv.waitEvent(t, waitTimeout, "server stream_refused "+tc.status,
				isEvent("stream_refused", "status", tc.status, "route", tc.route))
			cli.waitEvent(t, waitTimeout, "client stream_refused "+tc.status,
				isEvent("stream_refused", "status", tc.status, "route", tc.route))
		})
	}
	// A refused stream does not spoil the session.
	echoCheck(t, cli.forwardAddr(t, "echo"), 60, 4096)
	if n := len(cli.matching(isEvent("session_opened"))); n != 1 {
		t.Errorf("client opened %d sessions, want 1", n)
	}
}
