package e2e

import (
	"bufio"
	"net"
	"slices"
	"strings"
	"testing"
)

// TestRawClientToRawRoute: tunnel client --raw against a tunnel server's
// --raw-route, and the same client refused by a server without one, with
// the reason in the server's log.
func TestRawClientToRawRoute(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	echo := echoBackend(t)
	srv := startProc(t, append(serverArgs(pk, "127.0.0.1:0", "echo="+echo), "--raw-route", "echo")...)
	cli := startProc(t, append(clientArgs(pk, srv.addr(t), "echo"), "--raw")...)
	echoCheck(t, cli.forwardAddr(t, "echo"), 111, 4<<20)
	srv.waitEvent(t, waitTimeout, "raw session_closed", isEvent("session_closed", "mode", "raw", "identity_cn", "app1"))
	if n := len(srv.matching(isEvent("session_opened", "mode", "raw"))); n < 1 {
		t.Errorf("server logged %d raw sessions", n)
	}

	plain := startProc(t, serverArgs(pk, "127.0.0.1:0", "echo="+echo)...)
	refused := startProc(t, append(clientArgs(pk, plain.addr(t), "echo"), "--raw")...)
	c := dialLocal(t, refused.forwardAddr(t, "echo"))
	c.Write([]byte("hello"))
	assertClosed(t, c, waitTimeout)
	plain.waitEvent(t, waitTimeout, "conn_rejected no_alpn", isEvent("conn_rejected", "reason", "no_alpn", "identity_cn", "app1"))
}

// TestRouteProxyV2Binary: a --route with ,proxy-v2 gives the backend a
// PROXY v2 header naming the client's address before the client's bytes.
func TestRouteProxyV2Binary(t *testing.T) {
	t.Parallel()
	seen := make(chan string, 1)
	backend := startBackend(t, func(c *net.TCPConn) {
		// 16 fixed bytes, then for TCP over IPv4 12 bytes of addresses.
		br := bufio.NewReader(c)
		hdr := make([]byte, 28)
		if _, err := readFull(br, hdr); err != nil {
			seen <- "read error: " + err.Error()
			return
		}
		if string(hdr[:12]) != "\r\n\r\n\x00\r\nQUIT\n" || hdr[12] != 0x21 || hdr[13] != 0x11 {
			seen <- "not a PROXY v2 TCP4 header"
			return
		}
		src := net.IP(hdr[16:20]).String()
		seen <- src
		rest, _ := br.ReadString('\n')
		c.Write([]byte(rest))
	})
	pk := pkiDir(t)
	_, cli := tunnelPair(t, pk, map[string]string{"pp": backend + ",proxy-v2"})
	c := dialLocal(t, cli.forwardAddr(t, "pp"))
	c.Write([]byte("after the header\n"))
	got, _ := bufio.NewReader(c).ReadString('\n')
	if src := <-seen; src != "127.0.0.1" {
		t.Fatalf("backend saw %q, want a PROXY v2 header with source 127.0.0.1", src)
	}
	if strings.TrimSpace(got) != "after the header" {
		t.Errorf("client bytes after the header = %q", got)
	}
}

func readFull(br *bufio.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := br.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// TestInteropConfigErrors: the new flags' mistakes are configuration
// errors (exit 2, one line naming the flag).
func TestInteropConfigErrors(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	server := serverArgs(pk, "127.0.0.1:0", "echo=127.0.0.1:9")
	client := clientArgs(pk, "127.0.0.1:9", "echo")
	for _, tc := range []struct {
		name, flag string
		args       []string
	}{
		{"raw route naming no route", "--raw-route", withFlag(server, "--raw-route", "nope")},
		{"bad proxy-protocol-from", "--proxy-protocol-from", withFlag(server, "--proxy-protocol-from", "10.0.0.0/33")},
		{"unknown route option", "--route", withFlag(server, "--route", "echo=127.0.0.1:9,proxy-v9")},
		{"bad second server", "--server", append(slices.Clone(client), "--server", "no-port")},
		{"bad source", "--source", withFlag(client, "--source", "localhost")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, stderr, code := runTunnel(t, tc.args...)
			if code != 2 || len(scanLines(stderr)) != 1 || !strings.Contains(stderr, tc.flag) {
				t.Errorf("exit %d, stderr %q; want exit 2 and one line naming %s", code, stderr, tc.flag)
			}
		})
	}
}
