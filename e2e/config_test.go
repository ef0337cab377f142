package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// serverYAML is a valid server config file for pk with the given extra
// top-level lines.
func serverYAML(pk *pki, extra string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
tls: {cert: %s, key: %s, ca: %s}
allow: [127.0.0.1/32]
log: {format: json, level: debug}
routes:
  - name: db
    target: 127.0.0.1:5432
    allow_identities: ["cn:app1"]
%s`, pk.serverCert, pk.serverKey, pk.ca, extra)
}

// TestCheckBrokenConfigs: `tunnel check` on broken configs exits 2 and
// names the key path (or flag) of the problem, with its line; on a good one
// it exits 0 with a summary.
func TestCheckBrokenConfigs(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	dir := t.TempDir()
	good := serverYAML(pk, "")
	client := fmt.Sprintf("server: 127.0.0.1:1\ntls: {cert: %s, key: %s, ca: %s}\nforwards: [\"0=db\"]\n", pk.clientCert, pk.clientKey, pk.ca)
	tests := []struct {
		name, body, want string
	}{
		{"unknown key", good + "bogus: 1\n", ":9: bogus: unknown key"},
		{"dashes", good + "dial-timeout: 5s\n", ":9: dial-timeout: unknown key (did you mean dial_timeout?)"},
		{"bad duration", good + "handshake_timeout: 5 seconds\n", ":9: handshake_timeout:"},
		{"negative duration", good + "dial_timeout: -1s\n", ":9: dial_timeout: -1s is negative"},
		{"bad int", good + "max_streams: lots\n", ":9: max_streams:"},
		{"zero int", good + "max_handshakes: 0\n", ":9: max_handshakes:"},
		{"bad bool", good + "crl: {disable: perhaps}\n", ":9: crl.disable:"},
		{"tls unknown", strings.Replace(good, "ca:", "cafile:", 1), ":2: tls.cafile: unknown key"},
		{"missing cert", strings.Replace(good, pk.serverCert, filepath.Join(dir, "nope.pem"), 1), ":2: tls.cert:"},
		{"key mismatch", strings.Replace(good, pk.serverKey, pk.clientKey, 1), ":2: tls.key:"},
		{"bad CA", strings.Replace(good, "ca: "+pk.ca, "ca: "+pk.serverKey, 1), ":2: tls.ca:"},
		{"bad listen", strings.Replace(good, "127.0.0.1:0", "127.0.0.1:http-ish", 1), ":1: listen:"},
		{"bad CIDR", strings.Replace(good, "127.0.0.1/32", "127.0.0.1/33", 1), ":3: allow[0]:"},
		{"host bits", strings.Replace(good, "127.0.0.1/32", "127.0.0.1/8", 1), ":3: allow[0]:"},
		{"log level", strings.Replace(good, "level: debug", "level: loud", 1), ":4: log.level:"},
		{"route target", strings.Replace(good, "127.0.0.1:5432", "127.0.0.1", 1), ":6: routes[0]:"},
		{"route rule kind", strings.Replace(good, "cn:app1", "email:app1", 1), ":8: routes[0].allow_identities[0]:"},
		{"route wildcard", strings.Replace(good, "cn:app1", "dns:app*.corp", 1), ":8: routes[0].allow_identities[0]:"},
		{"route allow", good + "    allow: [10.0.0.0/40]\n", ":9: routes[0].allow[0]:"},
		{"route key", good + "    allowed_ids: [x]\n", ":9: routes[0].allowed_ids: unknown key"},
		{"duplicate route", good + "  - db=127.0.0.1:1\n", ":9: routes[1].name: route \"db\" is configured twice"},
		{"yaml syntax", good + "routes: [\n", "yaml"},
		{"client forward", strings.Replace(client, "0=db", "db", 1), ":3: forwards[0]:"},
		{"client server", strings.Replace(client, "127.0.0.1:1", "nohost", 1), ":1: server:"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("c%02d.yaml", i))
			if err := os.WriteFile(path, []byte(tt.body), 0o600); err != nil {
				t.Fatal(err)
			}
			_, stderr, code := runTunnel(t, "check", "--config", path)
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr:\n%s", code, stderr)
			}
			want := tt.want
			if strings.HasPrefix(want, ":") {
				want = filepath.Base(path) + want
			}
			if !strings.Contains(stderr, want) {
				t.Fatalf("stderr lacks %q:\n%s", want, stderr)
			}
		})
	}
	t.Run("good", func(t *testing.T) {
		path := filepath.Join(dir, "good.yaml")
		if err := os.WriteFile(path, []byte(good), 0o600); err != nil {
			t.Fatal(err)
		}
		stdout, stderr, code := runTunnel(t, "check", "--config", path)
		if code != 0 {
			t.Fatalf("exit %d; stderr:\n%s", code, stderr)
		}
		for _, w := range []string{"server configuration OK", "route        db -> 127.0.0.1:5432: identities cn:app1", "certificate  CN=tunnel-srv"} {
			if !strings.Contains(stdout, w) {
				t.Errorf("summary lacks %q:\n%s", w, stdout)
			}
		}
		// A flag overrides the file, in check as at start-up.
		stdout, _, code = runTunnel(t, "check", "--config", path, "--allow", "0.0.0.0/0")
		if code != 0 || !strings.Contains(stdout, "warning: --allow: 0.0.0.0/0 admits every IPv4 address") {
			t.Errorf("check --allow 0.0.0.0/0: exit %d, stdout:\n%s", code, stdout)
		}
	})
	t.Run("every problem", func(t *testing.T) {
		path := filepath.Join(dir, "many.yaml")
		body := strings.Replace(good, pk.serverKey, pk.clientKey, 1) + "bogus: 1\ndial_timeout: x\n"
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		_, stderr, code := runTunnel(t, "check", "--config", path)
		if code != 2 {
			t.Fatalf("exit %d, want 2", code)
		}
		for _, w := range []string{"many.yaml:9: bogus:", "many.yaml:10: dial_timeout:", "many.yaml:2: tls.key:", "3 problem(s)"} {
			if !strings.Contains(stderr, w) {
				t.Errorf("stderr lacks %q:\n%s", w, stderr)
			}
		}
	})
}

// TestConfigFilesEndToEnd: a server and a client started from config files
// move bytes; the client's config file then changes its forwards, which
// open and close listeners, and its certificate is rotated, which the next
// dial presents.
func TestConfigFilesEndToEnd(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	echo := echoBackend(t)
	listen := freeAddr(t, "127.0.0.1") // the restarted server must come back on it
	srvCfg := filepath.Join(t.TempDir(), "server.yaml")
	renameInto(t, srvCfg, []byte(fmt.Sprintf(`listen: %s
tls: {cert: %s, key: %s, ca: %s}
allow: [127.0.0.1/32]
log: {format: json, level: debug}
routes:
  - {name: echo, target: %q}
  - name: echo2
    target: %s
`, listen, pk.serverCert, pk.serverKey, pk.ca, echo, echo)))
	srv := startProc(t, "server", "--config", srvCfg)
	addr := srv.addr(t)

	cdir := t.TempDir()
	cert, key := filepath.Join(cdir, "app1.pem"), filepath.Join(cdir, "app1-key.pem")
	for src, dst := range map[string]string{pk.clientCert: cert, pk.clientKey: key} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		renameInto(t, dst, b)
	}
	cliCfg := filepath.Join(cdir, "client.yaml")
	clientConf := func(forwards string) []byte {
		return fmt.Appendf(nil, "server: %s\nserver_name: localhost\ntls: {cert: %s, key: %s, ca: %s}\nlog: {format: json, level: debug}\nforwards: %s\n",
			addr, cert, key, pk.ca, forwards)
	}
	renameInto(t, cliCfg, clientConf(`["127.0.0.1:0=echo"]`))
	cli := startProc(t, "client", "--config", cliCfg)
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	old := cli.forwardAddr(t, "echo")
	echoCheck(t, old, 1, 1<<20)

	// Forwards: echo goes, echo2 comes (as a mapping).
	renameInto(t, cliCfg, clientConf(`[{listen: "127.0.0.1:0", route: echo2}]`))
	cli.waitEvent(t, waitTimeout, "listener_stopped of echo", isEvent("listener_stopped", "route", "echo"))
	echoCheck(t, cli.forwardAddr(t, "echo2"), 2, 1<<20)
	if c, err := net.DialTimeout("tcp", old, 5*time.Second); err == nil {
		c.Close()
		t.Errorf("the removed forward %s still accepts connections", old)
	}

	// The client's certificate is rotated; the next dial presents it.
	serial, c, k := leafPEM(t, loadCA(t, pk), clientTmpl("app1"))
	renameInto(t, key, k)
	renameInto(t, cert, c)
	cli.waitEvent(t, waitTimeout, "reload_applied with the new certificate", isEvent("reload_applied", "identity_serial", serial))
	srv.signal(t, syscall.SIGTERM)
	if code := srv.wait(t, waitTimeout); code != 0 {
		t.Fatalf("server exit %d", code)
	}
	srv2 := startProc(t, "server", "--config", srvCfg)
	srv2.waitEvent(t, waitTimeout, "session_opened with the new client certificate", isEvent("session_opened", "identity_serial", serial))
	echoCheck(t, cli.forwardAddr(t, "echo2"), 3, 1<<20)
}

// TestReloadRefusesWhatAStartWould: a reload loads the new config file as a
// start would, so a value the server's own checks refuse (a negative
// duration, a raw route that names no route) is a reload_rejected naming
// the key and line, and the running configuration stays; a valid change
// the reload cannot apply is reported in restart_needed.
func TestReloadRefusesWhatAStartWould(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	echo := echoBackend(t)
	cfg := filepath.Join(t.TempDir(), "server.yaml")
	conf := func(allow string) string {
		return fmt.Sprintf("listen: 127.0.0.1:0\ntls: {cert: %s, key: %s, ca: %s}\nallow: [%s]\nlog: {format: json, level: debug}\nroutes: [\"echo=%s\"]\n",
			pk.serverCert, pk.serverKey, pk.ca, allow, echo)
	}
	base := conf("127.0.0.1/32")
	renameInto(t, cfg, []byte(base))
	srv := startProc(t, "server", "--config", cfg)
	addr := srv.addr(t)
	cli := startProc(t, clientArgs(pk, addr, "echo")...)
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))

	for i, tc := range []struct{ extra, want string }{
		{"dial_timeout: -1s\n", ":6: dial_timeout: -1s is negative"},
		{"raw_route: nope\n", ":6: raw_route: \"nope\" is not the name of a configured route"},
	} {
		renameInto(t, cfg, []byte(base+tc.extra))
		ev := srv.waitEventN(t, waitTimeout, i+1, "reload_rejected", isEvent("reload_rejected"))[i]
		if e, _ := ev["error"].(string); !strings.Contains(e, filepath.Base(cfg)+tc.want) {
			t.Errorf("reload_rejected error %q, want it to contain %q", e, tc.want)
		}
	}
	if n := len(srv.matching(isEvent("reload_applied"))); n != 0 {
		t.Fatalf("%d reloads applied a configuration a start refuses", n)
	}
	echoCheck(t, cli.forwardAddr(t, "echo"), 1, 64<<10) // the running configuration stayed

	renameInto(t, cfg, []byte(conf("127.0.0.1/32, 10.0.0.0/8")+"max_streams: 7\n"))
	ev := srv.waitEvent(t, waitTimeout, "reload_applied", isEvent("reload_applied"))
	if got := ev["restart_needed"]; got != "max_streams" {
		t.Errorf("restart_needed = %v, want max_streams (allow is applied)", got)
	}
	if got, _ := ev["allow_prefixes"].(float64); got != 2 {
		t.Errorf("allow_prefixes = %v, want 2", ev["allow_prefixes"])
	}
}
