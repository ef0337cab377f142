package e2e

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// httpDo fetches url with method and returns the status and body.
func httpDo(t *testing.T, method, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	c.CloseIdleConnections()
	return resp.StatusCode, string(body)
}

// waitMetrics polls an admin /metrics until it holds every line of wants:
// counters are updated when a stream or reload ends, a moment after the
// client sees it end.
func waitMetrics(t *testing.T, admin string, wants ...string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		code, body := httpDo(t, "GET", admin+"/metrics")
		var missing []string
		for _, w := range wants {
			if !strings.Contains(body, w) {
				missing = append(missing, w)
			}
		}
		if code == 200 && len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/metrics (status %d) lacks %q", admin, code, missing)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAdminEndpoints: metrics, health and readiness of both roles, and
// POST /reload doing what SIGHUP does, logged with trigger "admin".
func TestAdminEndpoints(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	srv := startProc(t, append(serverArgs(pk, "127.0.0.1:0", "echo="+echoBackend(t)), "--admin", "127.0.0.1:0")...)
	sadmin := "http://" + srv.adminAddr(t)
	if code, _ := httpDo(t, "GET", sadmin+"/healthz"); code != 200 {
		t.Errorf("server /healthz: %d", code)
	}
	if code, _ := httpDo(t, "GET", sadmin+"/readyz"); code != 200 {
		t.Errorf("server /readyz: %d", code)
	}

	cli := startProc(t, append(clientArgs(pk, srv.addr(t), "echo"), "--admin", "127.0.0.1:0")...)
	cadmin := "http://" + cli.adminAddr(t)
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	if code, body := httpDo(t, "GET", cadmin+"/readyz"); code != 200 {
		t.Errorf("client /readyz with a session: %d %s", code, body)
	}
	echoCheck(t, cli.forwardAddr(t, "echo"), 7, 1<<16)

	waitMetrics(t, sadmin, "tunnel_sessions_active 1", `tunnel_handshakes_total{result="ok"} 1`, "tunnel_streams_total 1",
		"tunnel_revocation_checks_total 1", "go_goroutines",
		`tunnel_route_bytes_total{direction="in",route="echo"} 65536`, `tunnel_route_bytes_total{direction="out",route="echo"} 65536`,
		`tunnel_route_streams_total{route="echo"} 1`, "tunnel_handshake_duration_seconds_count 1",
		"tunnel_backend_dial_duration_seconds_count 1", `tunnel_limit_hits_total{limit="conns_per_addr"} 0`)
	waitMetrics(t, cadmin, "tunnel_client_session_up 1", "tunnel_client_streams_total 1")
	if code, _ := httpDo(t, "POST", sadmin+"/reload"); code != 202 {
		t.Errorf("POST /reload: %d", code)
	}
	// The request goes through the reload loop's channel, not a signal the
	// process sends itself (Windows has no SIGHUP).
	srv.waitEvent(t, waitTimeout, "reload_applied after POST /reload", isEvent("reload_applied", "trigger", "admin"))
	waitMetrics(t, sadmin, `tunnel_reloads_total{result="applied"} 1`)
	if code, _ := httpDo(t, "POST", sadmin+"/crl/refresh"); code != 202 {
		t.Errorf("POST /crl/refresh: %d", code)
	}
}

// TestAdminClientNotReady: a client without a session answers 503.
func TestAdminClientNotReady(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	// Port 9 on loopback: nothing listens, every dial is refused.
	cli := startProc(t, append(clientArgs(pk, "127.0.0.1:9", "echo"), "--admin", "127.0.0.1:0")...)
	code, body := httpDo(t, "GET", "http://"+cli.adminAddr(t)+"/readyz")
	if code != 503 || !strings.Contains(body, "no session") {
		t.Errorf("client /readyz without a session: %d %q", code, body)
	}
}
