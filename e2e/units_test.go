//go:build linux

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestExampleUnitsVerify: systemd-analyze verify accepts the example units
// as they are in examples/ (the binary path pointed at the one under test,
// which it checks is executable), with no warning at all: it exits 0 on a
// setting it ignores, such as a Type= its version does not know. The
// socket-activation drop-in is checked in place; the notify-reload drop-in
// only where systemd is 253 or later, which knows Type=notify-reload.
func TestExampleUnitsVerify(t *testing.T) {
	analyze := requireTool(t, "systemd-analyze")
	root := filepath.Join("..", "examples")
	units := map[string]string{ // name in the temp dir -> file in examples/
		"tunnel-server.service":          "systemd/tunnel-server.service",
		"tunnel-client.service":          "systemd/tunnel-client.service",
		"tunnel-server.socket":           "systemd/tunnel-server.socket",
		"tunnel-pg-server.service":       "postgres/tunnel-server.service",
		"tunnel-pg-client.service":       "postgres/tunnel-client.service",
		"tunnel-server.service.d/a.conf": "systemd/socket-activation.conf",
	}
	version := systemdVersion(t)
	if version >= 253 {
		units["tunnel-client.service.d/b.conf"] = "systemd/notify-reload.conf"
	} else {
		t.Logf("NOTE: systemd %d predates Type=notify-reload (253): examples/systemd/notify-reload.conf is not verified here", version)
	}
	dir := t.TempDir()
	var names []string
	for name, src := range units {
		b, err := os.ReadFile(filepath.Join(root, src))
		if err != nil {
			t.Fatal(err)
		}
		b = []byte(strings.ReplaceAll(string(b), "/usr/local/bin/tunnel", tunnelBin))
		dst := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(name, "/") {
			names = append(names, name)
		}
	}
	cmd := exec.CommandContext(t.Context(), analyze, append([]string{"verify"}, names...)...)
	cmd.Dir = dir // drop-ins are found beside the units
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify %v: %v\n%s", names, err, out)
	}
	t.Logf("systemd %d: systemd-analyze verify passes, without a warning, on %v and the drop-ins", version, names)
	for _, u := range []string{"systemd/tunnel-server.service", "systemd/tunnel-client.service"} {
		b, _ := os.ReadFile(filepath.Join(root, u))
		for _, want := range []string{"\nType=notify\n", "\nNotifyAccess=main\n", "\nWatchdogSec=", "\nExecReload=/bin/kill -HUP $MAINPID\n"} {
			if !strings.Contains(string(b), want) {
				t.Errorf("%s lacks %q", u, strings.TrimSpace(want))
			}
		}
	}
}

// systemdVersion is the version of the systemd tools installed (0 if
// unknown).
func systemdVersion(t *testing.T) int {
	out, err := exec.Command("systemd-analyze", "--version").Output()
	if err != nil {
		return 0
	}
	m := regexp.MustCompile(`systemd (\d+)`).FindSubmatch(out)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}
