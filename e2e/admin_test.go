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

// TestAdminEndpoints: metrics, health and readiness of both roles, and
// POST /reload doing what SIGHUP does.
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

	code, body := httpDo(t, "GET", sadmin+"/metrics")
	for _, want := range []string{"tunnel_sessions_active 1", `tunnel_handshakes_total{result="ok"} 1`, "tunnel_streams_total 1",
		"tunnel_revocation_checks_total 1", "go_goroutines"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("server /metrics (%d) lacks %q", code, want)
		}
	}
	code, body = httpDo(t, "GET", cadmin+"/metrics")
	for _, want := range []string{"tunnel_client_session_up 1", "tunnel_client_streams_total 1"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("client /metrics (%d) lacks %q", code, want)
		}
	}
	if code, _ := httpDo(t, "POST", sadmin+"/reload"); code != 202 {
		t.Errorf("POST /reload: %d", code)
	}
	srv.waitEvent(t, waitTimeout, "reload_applied after POST /reload", isEvent("reload_applied"))
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
