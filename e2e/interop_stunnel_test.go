package e2e

import (
	"fmt"
	"testing"
)

// The stunnel interop tests: Debian's stunnel4 on each side of the tunnel,
// 16 MiB checked by SHA-256 end to end.

const interopBytes = 16 << 20

// startStunnel runs stunnel in the foreground with the service sections of
// conf and waits until it listens on accept.
func startStunnel(t *testing.T, accept, conf string) *extProc {
	t.Helper()
	bin := requireTool(t, "stunnel4", "/usr/bin/stunnel4", "/usr/bin/stunnel")
	path := writeFile(t, t.TempDir(), "stunnel.conf",
		"foreground = yes\npid =\nsyslog = no\ndebug = notice\n"+conf)
	p := startExt(t, bin, path)
	waitListening(t, p, accept)
	return p
}

// isStreamOf matches stream_closed lines that moved n bytes each way.
func isStreamOf(n int64) matcher {
	return func(ev map[string]any) bool {
		in, _ := ev["bytes_in"].(float64)
		out, _ := ev["bytes_out"].(float64)
		return ev["event"] == "stream_closed" && int64(in) == n && int64(out) == n
	}
}

// TestStunnelClientToRawRoute: stunnel (client = yes) -> tunnel server's
// raw route -> echo backend. The server logs the stunnel client's
// certificate identity as for any session.
func TestStunnelClientToRawRoute(t *testing.T) {
	t.Parallel()
	requireTool(t, "stunnel4", "/usr/bin/stunnel4", "/usr/bin/stunnel")
	pk := pkiDir(t)
	srv := startProc(t, append(serverArgs(pk, "127.0.0.1:0", "echo="+echoBackend(t)), "--raw-route", "echo")...)
	accept := freeAddr(t, "127.0.0.1")
	startStunnel(t, accept, fmt.Sprintf(`
[to-tunnel]
client = yes
accept = %s
connect = %s
cert = %s
key = %s
CAfile = %s
verifyChain = yes
checkHost = localhost
`, accept, srv.addr(t), pk.clientCert, pk.clientKey, pk.ca))

	echoCheck(t, accept, 71, interopBytes)
	ev := srv.waitEvent(t, waitTimeout, "stream_closed of 16 MiB", isStreamOf(interopBytes))
	if ev["identity_cn"] != "app1" || ev["route"] != "echo" {
		t.Errorf("stream_closed = %v, want identity_cn app1 on route echo", ev)
	}
	srv.waitEvent(t, waitTimeout, "raw session_opened", isEvent("session_opened", "mode", "raw", "identity_cn", "app1"))
}

// TestRawClientToStunnelServer: tunnel client --raw -> stunnel server
// (requireCert, verifyChain) -> echo backend.
func TestRawClientToStunnelServer(t *testing.T) {
	t.Parallel()
	requireTool(t, "stunnel4", "/usr/bin/stunnel4", "/usr/bin/stunnel")
	pk := pkiDir(t)
	accept := freeAddr(t, "127.0.0.1")
	startStunnel(t, accept, fmt.Sprintf(`
[from-tunnel]
accept = %s
connect = %s
cert = %s
key = %s
CAfile = %s
verifyChain = yes
requireCert = yes
`, accept, echoBackend(t), pk.serverCert, pk.serverKey, pk.ca))

	cli := startProc(t, append(clientArgs(pk, accept, "svc"), "--raw")...)
	echoCheck(t, cli.forwardAddr(t, "svc"), 72, interopBytes)
	cli.waitEvent(t, waitTimeout, "stream_closed of 16 MiB", isStreamOf(interopBytes))
}
