package e2e

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tunnel-dev/tunnel/internal/spiretest"
	"github.com/tunnel-dev/tunnel/trust"
)

// The SPIFFE tests run the tunnel binary, both roles, against a real SPIRE
// server and agent (internal/spiretest; binaries from `make spire`), on
// loopback and unix sockets in temporary directories. Every tunnel process
// runs as this test's user, so the unix workload attestor gives each of
// them every entry made here; each picks its own SVID with --spiffe-id, as
// workloads under different users would get one each.

// spiffeServerYAML is a server config that takes its identity from the
// agent at addr as id and admits the trust domain td on route echo.
func spiffeServerYAML(t *testing.T, addr, id, td, echo string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "server.yaml")
	body := fmt.Sprintf(`listen: 127.0.0.1:0
allow: [127.0.0.1/32]
admin: 127.0.0.1:0
spiffe:
  socket: %s
  id: %s
routes:
  - name: echo
    target: %s
    allow_identities: ["spiffe-td:%s"]
log: {format: json, level: debug}
`, addr, id, echo, td)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// spiffeClient starts a client that takes its identity from the agent at
// addr (through SPIFFE_ENDPOINT_SOCKET, as a workload in a SPIRE-enabled
// pod would) as id, and requires the server's SPIFFE ID serverID.
func spiffeClient(t *testing.T, addr, id, server, serverID string) *proc {
	t.Helper()
	return startProcEnv(t, []string{"SPIFFE_ENDPOINT_SOCKET=" + addr}, "client", "--server", server,
		"--spiffe-id", id, "--server-spiffe-id", serverID, "--forward", "127.0.0.1:0=echo", "--admin", "127.0.0.1:0",
		"--connect-timeout", "10s", "--log-format", "json", "--log-level", "debug")
}

// isRotation matches a SPIFFE source's update that brought a new SVID.
func isRotation(ev map[string]any) bool {
	return ev["event"] == "identity_updated" && ev["svid_rotated"] == true
}

// waitReadyz polls an admin /readyz until its status is code and its body
// holds want, and returns the body.
func waitReadyz(t *testing.T, admin string, code int, want string, d time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		c, body := httpDo(t, "GET", admin+"/readyz")
		if c == code && strings.Contains(body, want) {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/readyz: %d %q after %v, want %d with %q", admin, c, body, d, code, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A tunnel between two SVID-holding workloads through the binary: the
// server admits the client by trust domain, the client knows the server by
// its SPIFFE ID; an SVID rotation during a live transfer keeps the session
// and every byte, and the next handshake sees the new SVID; the agent
// going away leaves both serving (stale in /readyz and the metrics) until
// it is back; a deleted entry makes its workload's SVID run out (/readyz
// 503), after which the restarted server refuses it.
func TestSPIFFEThroughBinary(t *testing.T) {
	t.Parallel() // most of the time is SVID lifetimes
	spire := spiretest.StartServer(t, "a.test")
	agent := spiretest.StartAgent(t, spire)
	const ttl = 20 * time.Second
	srvID, cliID := spire.ID("tunnel-server"), spire.ID("tunnel-client")
	spire.CreateEntry(t, agent, spiretest.Entry{SPIFFEID: srvID, TTL: ttl})
	cliEntry := spire.CreateEntry(t, agent, spiretest.Entry{SPIFFEID: cliID, TTL: ttl})
	echo := echoBackend(t)
	cfg := spiffeServerYAML(t, agent.Addr, srvID, "a.test", echo)

	stdout, stderr, code := runTunnel(t, "check", "--config", cfg)
	if want := "identity     SPIFFE Workload API " + agent.Addr + ": " + srvID + ", bundles of a.test"; code != 0 || !strings.Contains(stdout, want) {
		t.Fatalf("tunnel check: exit %d, want a summary with %q:\n%s%s", code, want, stdout, stderr)
	}

	start := time.Now()
	server := startProc(t, "server", "--config", cfg)
	addr := server.addr(t)
	sadmin := "http://" + server.adminAddr(t)
	client := spiffeClient(t, agent.Addr, cliID, addr, srvID)
	client.waitEvent(t, 2*waitTimeout, "session_opened", isEvent("session_opened"))
	t.Logf("both binaries started on SVIDs and the session opened %v after the server started", time.Since(start).Round(time.Millisecond))
	opened := server.waitEvent(t, waitTimeout, "the server's session_opened", isEvent("session_opened"))
	if sans, _ := opened["identity_sans"].(string); !strings.Contains(sans, "uri:"+cliID) {
		t.Errorf("the server's session_opened names %q, want the client's SPIFFE ID %s", sans, cliID)
	}
	cadmin := "http://" + client.adminAddr(t)
	fwd := client.forwardAddr(t, "echo")
	echoCheck(t, fwd, 1, 1<<20)
	firstServerSerial := server.waitEvent(t, waitTimeout, "own SVID", func(ev map[string]any) bool {
		return ev["msg"] == "own certificate: X.509-SVID from the SPIFFE Workload API"
	})["identity_serial"]

	// Rotation during a live transfer.
	srvRotations, cliRotations := len(server.matching(isRotation)), len(client.matching(isRotation))
	live := startLiveEcho(t, fwd, 2)
	liveStart := time.Now()
	server.waitEventN(t, 3*ttl, srvRotations+1, "the server's SVID rotation during the transfer", isRotation)
	client.waitEventN(t, 3*ttl, cliRotations+1, "the client's SVID rotation during the transfer", isRotation)
	t.Logf("both SVIDs rotated %v into the transfer (TTL %v)", time.Since(liveStart).Round(time.Millisecond), ttl)
	server.waitEvent(t, waitTimeout, "the server's identity_applied of its new SVID", func(ev map[string]any) bool {
		return ev["event"] == "identity_applied" && ev["identity_serial"] != firstServerSerial
	})
	client.waitEvent(t, waitTimeout, "the client's identity_applied", isEvent("identity_applied"))
	time.Sleep(time.Second) // the transfer goes on across the swap
	n, intact, err := live.finish()
	if !intact {
		t.Fatalf("the transfer across the rotation: %d bytes, intact %v, error %v", n, intact, err)
	}
	t.Logf("%d bytes echoed across both rotations in %v, SHA-256 intact", n, time.Since(liveStart).Round(time.Millisecond))
	for _, p := range []*proc{server, client} {
		if evs := p.matching(isEvent("session_closed")); len(evs) > 0 {
			t.Errorf("%s closed a session across the rotation: %v", p.name, evs[0])
		}
	}
	for _, ev := range append(server.matching(isEvent("identity_applied")), client.matching(isEvent("identity_applied"))...) {
		if ev["sessions_closed"] != float64(0) {
			t.Errorf("identity_applied closed sessions across the rotation: %v", ev)
		}
	}

	// The next handshake sees the server's new SVID: this test dials it as
	// the client workload.
	src, err := trust.NewSPIFFESource(t.Context(), trust.SPIFFEConfig{Addr: agent.Addr, ID: cliID, StartTimeout: waitTimeout})
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", addr, trust.ClientConfig(trust.NewStore(src.Material()), "", []string{trust.ALPNTunnel},
		trust.WithServerSPIFFEID(spiffeid.RequireFromString(srvID))))
	src.Close()
	if err != nil {
		t.Fatalf("a handshake after the rotation: %v", err)
	}
	serial := c.ConnectionState().PeerCertificates[0].SerialNumber.Text(16)
	c.Close()
	rotated := false
	for _, ev := range server.matching(isEvent("identity_applied")) {
		rotated = rotated || ev["identity_serial"] == serial
	}
	if serial == firstServerSerial || !rotated {
		t.Errorf("the server presents serial %s after the rotation; its first SVID was %v, and no identity_applied names it", serial, firstServerSerial)
	}
	waitMetrics(t, sadmin, `tunnel_identity_source_up{kind="spiffe"} 1`, `tunnel_identity_source_state{kind="spiffe",state="ok"} 1`)
	if u := metricValue(t, sadmin, `tunnel_identity_updates_total{kind="spiffe"}`); u < 2 {
		t.Errorf(`tunnel_identity_updates_total{kind="spiffe"} = %v after a rotation, want at least 2`, u)
	}

	// A reload keeps the agent's material.
	server.signal(t, syscall.SIGHUP)
	server.waitEvent(t, waitTimeout, "reload_applied", isEvent("reload_applied", "trigger", "sighup"))

	// The agent goes away: both keep serving on the last SVID, stale.
	agent.Stop()
	stopped := time.Now()
	body := waitReadyz(t, sadmin, 200, "is stale", waitTimeout)
	t.Logf("the server's /readyz names its stale source %v after the agent stopped: %q", time.Since(stopped).Round(time.Millisecond), body)
	server.waitEvent(t, waitTimeout, "identity_source_failed", isEvent("identity_source_failed"))
	waitMetrics(t, sadmin, `tunnel_identity_source_up{kind="spiffe"} 0`, `tunnel_identity_source_state{kind="spiffe",state="stale"} 1`)
	echoCheck(t, fwd, 3, 1<<18)
	restarted := time.Now()
	agent.Restart(t)
	waitMetrics(t, sadmin, `tunnel_identity_source_up{kind="spiffe"} 1`)
	if body := waitReadyz(t, sadmin, 200, "ready", waitTimeout); strings.Contains(body, "stale") {
		t.Errorf("/readyz still names a stale source with the source ok: %q", body)
	}
	t.Logf("the server's source was ok again %v after the agent's restart began", time.Since(restarted).Round(time.Millisecond))

	// The client's entry is deleted: its source goes stale, keeps its
	// last SVID until that expires (then /readyz is 503), and a server
	// that starts afresh refuses it.
	spire.DeleteEntry(t, cliEntry)
	deleted := time.Now()
	body = waitReadyz(t, cadmin, 200, "is stale", waitTimeout)
	if !strings.Contains(body, cliID) {
		t.Errorf("the client's /readyz does not name its missing SVID %s: %q", cliID, body)
	}
	t.Logf("the client's source stale %v after its entry was deleted", time.Since(deleted).Round(time.Millisecond))
	body = waitReadyz(t, cadmin, 503, "identity source spiffe ("+agent.Addr+") is expired", ttl+waitTimeout)
	t.Logf("the client's /readyz 503 %v after the deletion (SVID TTL %v): %q", time.Since(deleted).Round(time.Millisecond), ttl, body)
	waitMetrics(t, cadmin, `tunnel_identity_source_state{kind="spiffe",state="expired"} 1`)
	server.signal(t, syscall.SIGTERM)
	if code := server.wait(t, waitTimeout); code != 0 {
		t.Fatalf("server exit %d", code)
	}
	again := startProc(t, "server", "--config", cfg, "--listen", addr)
	again.waitEvent(t, 2*waitTimeout, "the client refused", isEvent("handshake_failed", "reason", "expired_or_not_yet_valid"))
	if n := len(again.matching(isEvent("session_opened"))); n != 0 {
		t.Errorf("the server admitted the workload whose entry was deleted, %d times", n)
	}
	t.Logf("refused by the restarted server %v after the deletion", time.Since(deleted).Round(time.Millisecond))
}

// Trust bundles through the binary, across two trust domains: a server
// without the client's trust domain's bundle refuses it; federating brings
// it in; a bundle update that drops that trust domain closes the live
// session (session_revoked ca_removed), logged (identity_applied
// sessions_closed) and counted, and the redial is refused.
func TestSPIFFEFederationThroughBinary(t *testing.T) {
	t.Parallel()
	spireA := spiretest.StartServer(t, "a.test") // the tunnel server's trust domain
	spireB := spiretest.StartServer(t, "b.test") // the tunnel client's
	agentA := spiretest.StartAgent(t, spireA)
	agentB := spiretest.StartAgent(t, spireB)
	srvID, cliID := spireA.ID("tunnel-server"), spireB.ID("tunnel-client")
	spireB.SetFederatedBundle(t, spireA) // the client trusts a.test from the start
	spireB.CreateEntry(t, agentB, spiretest.Entry{SPIFFEID: cliID, FederatesWith: []string{"spiffe://a.test"}})
	serverEntry := spireA.CreateEntry(t, agentA, spiretest.Entry{SPIFFEID: srvID})
	echo := echoBackend(t)
	server := startProc(t, "server", "--config", spiffeServerYAML(t, agentA.Addr, srvID, "b.test", echo))
	addr := server.addr(t)
	sadmin := "http://" + server.adminAddr(t)

	refused := spiffeClient(t, agentB.Addr, cliID, addr, srvID)
	server.waitEvent(t, 2*waitTimeout, "the b.test client refused", isEvent("handshake_failed", "reason", "unknown_authority"))
	refused.waitEvent(t, waitTimeout, "the client's failed dial", isEvent("session_failed"))
	if n := len(server.matching(isEvent("session_opened"))); n != 0 {
		t.Fatalf("a server without b.test's bundle admitted its client %d times", n)
	}
	killProc(t, refused) // its backoff would outlast the federation

	spireA.SetFederatedBundle(t, spireB)
	spireA.UpdateEntry(t, agentA, serverEntry, spiretest.Entry{SPIFFEID: srvID, FederatesWith: []string{"spiffe://b.test"}})
	federated := time.Now()
	server.waitEvent(t, waitTimeout, "b.test's bundle", isEvent("identity_updated", "trust_domains", "a.test,b.test"))
	t.Logf("the server took in b.test's bundle %v after the entry update", time.Since(federated).Round(time.Millisecond))
	client := spiffeClient(t, agentB.Addr, cliID, addr, srvID)
	client.waitEvent(t, 2*waitTimeout, "session after federation", isEvent("session_opened"))
	fwd := client.forwardAddr(t, "echo")
	echoCheck(t, fwd, 5, 1<<18)

	live := startLiveEcho(t, fwd, 6)
	time.Sleep(300 * time.Millisecond) // bytes are moving
	spireA.DeleteFederatedBundle(t, "b.test")
	dropped := time.Now()
	server.waitEvent(t, 2*waitTimeout, "session_revoked ca_removed", isEvent("session_revoked", "reason", "ca_removed"))
	t.Logf("the live session closed (session_revoked ca_removed) %v after `spire-server bundle delete`", time.Since(dropped).Round(time.Millisecond))
	if n, intact, _ := live.finish(); intact {
		t.Errorf("the live transfer went on (%d bytes) after b.test left the server's bundles", n)
	}
	applied := server.waitEvent(t, waitTimeout, "identity_applied closing it", func(ev map[string]any) bool {
		return ev["event"] == "identity_applied" && ev["sessions_closed"] == float64(1)
	})
	if applied["level"] != "warning" {
		t.Errorf("identity_applied that closed a session logged at %v, want warning", applied["level"])
	}
	waitMetrics(t, sadmin, `tunnel_identity_sessions_closed_total{kind="spiffe"} 1`)
	server.waitEvent(t, waitTimeout, "the redial refused", isEvent("handshake_failed", "reason", "unknown_authority"))
}

// The agent unreachable at start-up: the start waits --spiffe-start-timeout
// and fails with one line naming the socket (exit 2), as `tunnel check`
// does; the socket and the TLS files together, or a bad standard variable,
// fail at once naming what is at fault.
func TestSPIFFEStartupThroughBinary(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "no-agent.sock")
	base := []string{"--listen", "127.0.0.1:0", "--allow", "127.0.0.1/32", "--route", "echo=127.0.0.1:1"}
	start := time.Now()
	_, stderr, code := runTunnel(t, append([]string{"server", "--spiffe-socket", sock, "--spiffe-start-timeout", "2s"}, base...)...)
	took := time.Since(start)
	want := `tunnel server: --spiffe-socket: trust: SPIFFE Workload API "unix://` + sock + `": no X.509-SVID within 2s: `
	if code != 2 || !strings.HasPrefix(stderr, want) || strings.Count(stderr, "\n") != 1 {
		t.Errorf("no agent: exit %d, stderr %q; want 2 and one line starting %q", code, stderr, want)
	}
	if took < 2*time.Second || took > 20*time.Second {
		t.Errorf("no agent: gave up after %v, want about the 2 s start timeout", took)
	}
	t.Logf("no agent: exit 2 after %v: %s", took.Round(time.Millisecond), strings.TrimSpace(stderr))

	_, stderr, code = runTunnel(t, append([]string{"check", "--role", "server", "--spiffe-socket", sock, "--spiffe-start-timeout", "1s"}, base...)...)
	if code != 2 || !strings.Contains(stderr, "--spiffe-socket: trust: SPIFFE Workload API") {
		t.Errorf("tunnel check with no agent: exit %d, stderr %q", code, stderr)
	}

	pk := pkiDir(t)
	_, stderr, code = runTunnel(t, append([]string{"server", "--spiffe-socket", sock, "--cert", pk.serverCert, "--key", pk.serverKey, "--ca", pk.ca}, base...)...)
	if code != 2 || !strings.Contains(stderr, "--spiffe-socket: given with --cert, --key, --ca") {
		t.Errorf("socket and files: exit %d, stderr %q", code, stderr)
	}
	// The standard variable beside the files: the files are used, and a
	// warning says the variable was not.
	srv := startProcEnv(t, []string{"SPIFFE_ENDPOINT_SOCKET=unix://" + sock}, serverArgs(pk, "127.0.0.1:0", "echo="+echoBackend(t))...)
	srv.addr(t)
	srv.waitEvent(t, waitTimeout, "the variable ignored", isEvent("config_warning", "warning", "spiffe_env_ignored"))
	cmd := append([]string{"server"}, base...)
	bad := startProcEnv(t, []string{"SPIFFE_ENDPOINT_SOCKET=agent.sock"}, cmd...)
	if code := bad.wait(t, waitTimeout); code != 2 {
		t.Errorf("a relative SPIFFE_ENDPOINT_SOCKET: exit %d", code)
	}
	if out := strings.Join(bad.lines, "\n"); !strings.Contains(out, `SPIFFE_ENDPOINT_SOCKET: trust: SPIFFE Workload API "agent.sock": invalid address`) {
		t.Errorf("a relative SPIFFE_ENDPOINT_SOCKET: %q", out)
	}
}
