package e2e

import (
	"fmt"
	"testing"
	"time"
)

// startHAProxy runs Debian's haproxy in TCP mode on a free 127.0.0.1 port
// in front of servers, sending each a PROXY v2 header, with the settings of
// examples/haproxy/haproxy.cfg (quicker checks). It returns the frontend.
func startHAProxy(t *testing.T, servers ...string) string {
	t.Helper()
	bin := requireTool(t, "haproxy", "/usr/sbin/haproxy")
	front := freeAddr(t, "127.0.0.1")
	cfg := fmt.Sprintf(`
global
    maxconn 256
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    retries 3
    option redispatch 1
frontend tunnel
    bind %s
    default_backend tunnel_servers
backend tunnel_servers
    balance leastconn
    default-server send-proxy-v2 check inter 200ms fall 1 rise 2
`, front)
	for i, s := range servers {
		cfg += fmt.Sprintf("    server tunnel%d %s\n", i+1, s)
	}
	path := writeFile(t, t.TempDir(), "haproxy.cfg", cfg)
	p := startExt(t, bin, "-db", "-f", path) // -db: foreground, no daemon
	waitListening(t, p, front)
	return front
}

// TestHAProxyProxyProtocol: two tunnel servers behind HAProxy with
// send-proxy-v2. A client from 127.0.0.2 (allowed) gets through and the
// servers' audit lines name 127.0.0.2, not HAProxy; a client from
// 127.0.0.3 (not allowed) is reset by the server that got its header;
// killing the server holding the session moves it to the other within the
// bound, and new streams work there.
func TestHAProxyProxyProtocol(t *testing.T) {
	t.Parallel()
	requireTool(t, "haproxy", "/usr/sbin/haproxy")
	pk := pkiDir(t)
	echo := echoBackend(t)
	var srvs [2]*proc
	for i := range srvs {
		args := append(serverArgsFrom(pk, "127.0.0.1:0", "127.0.0.2/32", "echo="+echo),
			"--proxy-protocol-from", "127.0.0.1/32") // HAProxy connects from 127.0.0.1
		srvs[i] = startProc(t, args...)
	}
	front := startHAProxy(t, srvs[0].addr(t), srvs[1].addr(t))

	allowed := startProc(t, append(clientArgs(pk, front, "echo"), "--source", "127.0.0.2")...)
	allowed.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	fwd := allowed.forwardAddr(t, "echo")
	echoCheck(t, fwd, 101, 4<<20)

	// Which server holds the session? Its session_opened names 127.0.0.2.
	holder, other := -1, -1
	deadline := time.Now().Add(waitTimeout)
	for holder < 0 && time.Now().Before(deadline) {
		for i, s := range srvs {
			for _, ev := range s.matching(isEvent("session_opened")) {
				if addrHost(ev) != "127.0.0.2" {
					t.Fatalf("server %s logged session_opened from %v, want the client 127.0.0.2, not HAProxy", s.name, ev["addr"])
				}
				holder, other = i, 1-i
			}
		}
		time.Sleep(10 * time.Millisecond) // poll interval, not synchronisation
	}
	if holder < 0 {
		t.Fatal("no server logged the allowed client's session")
	}

	denied := startProc(t, append(withFlag(clientArgs(pk, front, "echo"), "--connect-timeout", "2s"), "--source", "127.0.0.3")...)
	denied.waitEvent(t, waitTimeout, "session_failed", isEvent("session_failed"))
	deniedFwd := denied.forwardAddr(t, "echo")
	assertClosed(t, dialLocal(t, deniedFwd), waitTimeout)
	rejected := false
	for deadline := time.Now().Add(waitTimeout); !rejected; {
		for _, s := range srvs {
			rejected = rejected || len(s.matching(isEvent("conn_rejected", "reason", "ip_not_allowed", "addr", "127.0.0.3"))) > 0
		}
		if time.Now().After(deadline) {
			t.Fatal("no server logged conn_rejected ip_not_allowed for 127.0.0.3")
		}
		time.Sleep(10 * time.Millisecond) // poll interval, not synchronisation
	}
	if len(denied.matching(isEvent("session_opened"))) != 0 {
		t.Fatal("the client from 127.0.0.3 got a session through HAProxy")
	}

	start := time.Now()
	killProc(t, srvs[holder])
	srvs[other].waitEvent(t, waitTimeout, "session_opened on the other server",
		func(ev map[string]any) bool { return ev["event"] == "session_opened" && addrHost(ev) == "127.0.0.2" })
	allowed.waitEventN(t, waitTimeout, 2, "second session_opened", isEvent("session_opened"))
	took := time.Since(start)
	t.Logf("through HAProxy: session moved to the other server in %v (bound %v)", took.Round(time.Millisecond), failoverBound)
	if took > 3*failoverBound {
		t.Errorf("failover through HAProxy took %v, want well within %v", took, failoverBound)
	}
	echoCheck(t, fwd, 102, 4<<20)
	srvs[other].waitEvent(t, waitTimeout, "stream_closed from 127.0.0.2",
		func(ev map[string]any) bool { return ev["event"] == "stream_closed" && addrHost(ev) == "127.0.0.2" })
	// HAProxy's TCP checks (connect, close, no header) are answered quietly.
	if evs := srvs[other].matching(isEvent("conn_rejected", "reason", "proxy_header")); len(evs) > 0 {
		t.Errorf("health checks logged as rejections: %v", evs[0])
	}
	for _, ev := range srvs[other].matching(func(ev map[string]any) bool { return ev["addr"] != nil && addrHost(ev) == "127.0.0.1" }) {
		if ev["event"] == "session_opened" || ev["event"] == "stream_closed" {
			t.Errorf("server logged HAProxy's address as a client: %v", ev)
		}
	}
}
