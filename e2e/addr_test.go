package e2e

import (
	"io"
	"net"
	"path/filepath"
	"testing"
)

// TestIPv6Listen runs the server on [::1] with an IPv6-only allowlist and a
// client forwarding on [::1]: bytes go through intact.
func TestIPv6Listen(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	backend := echoBackend(t)
	args := withFlag(serverArgs(pk, "[::1]:0", "echo="+backend), "--allow", "::1/128")
	srv := startProc(t, args...)
	addr := srv.addr(t)
	if host, _, _ := net.SplitHostPort(addr); host != "::1" {
		t.Fatalf("server listening on %s, want [::1]", addr)
	}
	cargs := []string{"client", "--server", addr, "--server-name", "localhost",
		"--cert", pk.clientCert, "--key", pk.clientKey, "--ca", pk.ca,
		"--forward", "[::1]:0=echo", "--log-format", "json", "--log-level", "debug"}
	cli := startProc(t, cargs...)
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	ev := srv.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	if a, _ := ev["addr"].(string); a == "" || a[0] != '[' {
		t.Fatalf("server saw the client as %q, want an [::1] address", a)
	}
	echoCheck(t, cli.forwardAddr(t, "echo"), 61, 4<<20)
}

// TestUnixSocketRoute carries a stream to a backend on a unix socket, as a
// route to PostgreSQL's socket would.
func TestUnixSocketRoute(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "echo.sock")
	ln, err := net.Listen("unix", sock)
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
				c.(*net.UnixConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	pk := pkiDir(t)
	_, cli := tunnelPair(t, pk, map[string]string{"sock": "unix:" + sock})
	echoCheck(t, cli.forwardAddr(t, "sock"), 62, 4<<20)
}
