package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The file source reports like the others: a reload whose key does not
// match its certificate leaves the last material serving, stale in
// /readyz (200, named) and the metrics, and a good file makes it ok again.
func TestIdentityFileSourceStatus(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	srv, _, dir := rotatingServer(t, pk, "--admin", "127.0.0.1:0")
	admin := "http://" + srv.adminAddr(t)
	waitMetrics(t, admin, `tunnel_identity_source_up{kind="file"} 1`, `tunnel_identity_updates_total{kind="file"} 1`,
		`tunnel_identity_source_failures_total{kind="file"} 0`)
	if v := metricValue(t, admin, `tunnel_identity_expiry_seconds{kind="file"}`); v < 24*3600 {
		t.Errorf(`tunnel_identity_expiry_seconds{kind="file"} = %v, want the certificate's remaining life`, v)
	}

	keyFile := filepath.Join(dir, filepath.Base(pk.serverKey))
	good, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	other, err := os.ReadFile(pk.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	renameInto(t, keyFile, other)
	srv.waitEvent(t, waitTimeout, "reload_rejected", isEvent("reload_rejected"))
	waitMetrics(t, admin, `tunnel_identity_source_up{kind="file"} 0`, `tunnel_identity_source_failures_total{kind="file"} 1`,
		`tunnel_identity_source_state{kind="file",state="stale"} 1`)
	body := waitReadyz(t, admin, 200, "is stale", waitTimeout)
	if !strings.Contains(body, "does not match certificate") {
		t.Errorf("/readyz does not say why the files are stale: %q", body)
	}

	renameInto(t, keyFile, good)
	srv.waitEvent(t, waitTimeout, "reload_applied", isEvent("reload_applied", "trigger", "file_changed"))
	waitMetrics(t, admin, `tunnel_identity_source_up{kind="file"} 1`, `tunnel_identity_updates_total{kind="file"} 2`)
	if code, body := httpDo(t, "GET", admin+"/readyz"); code != 200 || strings.Contains(body, "stale") {
		t.Errorf("/readyz after the good key came back: %d %q", code, body)
	}
}

// A reload cannot switch the identity source: a config file that moves from
// the files to the SPIFFE Workload API is rejected, naming the restart it
// takes, and the files keep serving.
func TestIdentitySourceSwitchTakesRestart(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	cfg := filepath.Join(t.TempDir(), "server.yaml")
	renameInto(t, cfg, []byte(serverYAML(pk, "")))
	srv := startProc(t, "server", "--config", cfg)
	srv.addr(t)
	body := strings.Replace(serverYAML(pk, "spiffe: {socket: /run/spire/agent.sock}\n"),
		"tls: {cert: "+pk.serverCert+", key: "+pk.serverKey+", ca: "+pk.ca+"}\n", "", 1)
	renameInto(t, cfg, []byte(body))
	ev := srv.waitEvent(t, waitTimeout, "reload_rejected", isEvent("reload_rejected"))
	if msg, _ := ev["error"].(string); !strings.Contains(msg, "the identity source changed from the files to the SPIFFE Workload API: that takes a restart") {
		t.Errorf("reload_rejected error %q", msg)
	}
	if n := len(srv.matching(isEvent("reload_applied"))); n != 0 {
		t.Errorf("%d reloads applied", n)
	}
}
