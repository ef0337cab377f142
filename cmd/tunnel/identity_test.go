package main

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/trust"
)

// buildSettings resolves args with cmd's flags and builds the settings,
// returning the problems as text.
func buildSettings(t *testing.T, cmd *cli.Command, args ...string) (*config.Settings, []string) {
	t.Helper()
	v, probs, err := resolveCmd(t, cmd, args...)
	if err != nil {
		t.Fatalf("%q: %v", args, err)
	}
	var out []string
	for _, p := range probs {
		out = append(out, p.String())
	}
	if v == nil {
		return nil, out
	}
	s, more := v.Settings()
	for _, p := range more {
		out = append(out, p.String())
	}
	return s, out
}

// Where the material comes from: files, a socket given, or the standard
// variable when nothing else is; each misuse is one problem naming the
// setting (and the file line).
func TestIdentitySettings(t *testing.T) {
	dir := pki(t)
	p := func(f string) string { return filepath.Join(dir, f) }
	files := []string{"--cert", p("srv.test.pem"), "--key", p("srv.test-key.pem"), "--ca", p("ca.pem")}
	base := []string{"--allow", "127.0.0.1/32", "--route", "e=127.0.0.1:1"}
	yaml := writeFile(t, "s.yaml", "spiffe:\n  socket: /run/spire/agent.sock\n  id: not-an-id\n")
	tests := []struct {
		name string
		env  string // SPIFFE_ENDPOINT_SOCKET
		args []string
		want string // a problem containing this; "" for none
		addr string // the SPIFFE address wanted; "" for files
	}{
		{name: "files", args: files},
		{name: "socket", args: []string{"--spiffe-socket", "/run/spire/agent.sock", "--spiffe-id", "spiffe://a.test/srv"}, addr: "unix:///run/spire/agent.sock"},
		{name: "standard variable", env: "unix:///run/spire/env.sock", addr: "unix:///run/spire/env.sock"},
		{name: "socket beats variable", env: "unix:///run/spire/env.sock", args: []string{"--spiffe-socket", "tcp://127.0.0.1:8081"}, addr: "tcp://127.0.0.1:8081"},
		{name: "files beat variable", env: "unix:///run/spire/env.sock", args: files},
		{name: "socket and files", args: append([]string{"--spiffe-socket", "/run/a.sock"}, files...), want: "--spiffe-socket: given with --cert, --key, --ca"},
		{name: "socket and one file", args: []string{"--spiffe-socket", "/run/a.sock", "--ca", p("ca.pem")}, want: "--spiffe-socket: given with --ca"},
		{name: "bad socket", args: []string{"--spiffe-socket", "agent.sock"}, want: `--spiffe-socket: trust: SPIFFE Workload API "agent.sock": invalid address`},
		{name: "bad variable", env: "agent.sock", want: `SPIFFE_ENDPOINT_SOCKET: trust: SPIFFE Workload API "agent.sock": invalid address`},
		{name: "id without socket", args: append([]string{"--spiffe-id", "spiffe://a.test/srv"}, files...), want: "--spiffe-id: given without --spiffe-socket"},
		{name: "bad id", args: []string{"--spiffe-socket", "/run/a.sock", "--spiffe-id", "https://a.test/srv"}, want: `--spiffe-id: "https://a.test/srv" is not a SPIFFE ID`},
		{name: "bad id in file", args: []string{"--config", yaml}, want: yaml + `:3: spiffe.id: "not-an-id" is not a SPIFFE ID`},
		{name: "zero wait", args: []string{"--spiffe-socket", "/run/a.sock", "--spiffe-start-timeout", "0s"}, want: "--spiffe-start-timeout: 0s is not a positive duration"},
		{name: "crl files", args: []string{"--spiffe-socket", "/run/a.sock", "--crl", p("ca.pem")}, want: "--crl: given with --spiffe-socket"},
		{name: "nothing", want: "--cert: required (or --spiffe-socket for the SPIFFE Workload API)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("SPIFFE_ENDPOINT_SOCKET", tt.env)
			s, probs := buildSettings(t, serverCommand(io.Discard), append(slices.Clone(base), tt.args...)...)
			if tt.want != "" {
				if len(probs) == 0 || !strings.Contains(strings.Join(probs, "\n"), tt.want) {
					t.Fatalf("problems %q, want one containing %q", probs, tt.want)
				}
				return
			}
			if len(probs) > 0 {
				t.Fatalf("problems: %q", probs)
			}
			switch {
			case tt.addr == "" && (s.SPIFFE != nil || s.Material == nil):
				t.Errorf("want file material, got SPIFFE %+v", s.SPIFFE)
			case tt.addr != "" && (s.SPIFFE == nil || s.SPIFFE.Addr != tt.addr || s.Material != nil):
				t.Errorf("SPIFFE = %+v, want address %s and no file material", s.SPIFFE, tt.addr)
			}
			ignored := slices.ContainsFunc(s.Warnings(), func(w config.Warning) bool { return w.Kind == config.WarnSPIFFEEnvIgnored })
			if want := tt.env != "" && tt.addr == ""; ignored != want {
				t.Errorf("spiffe_env_ignored warning %v, want %v", ignored, want)
			}
		})
	}
}

// The OCSP and server-identity settings: bad values and contradictions name
// their flag; good ones reach the policy and the role settings.
func TestOCSPSettings(t *testing.T) {
	dir := pki(t)
	p := func(f string) string { return filepath.Join(dir, f) }
	srv := []string{"--allow", "127.0.0.1/32", "--route", "e=127.0.0.1:1", "--cert", p("srv.test.pem"), "--key", p("srv.test-key.pem"), "--ca", p("ca.pem")}
	cli := []string{"--server", "127.0.0.1:1", "--forward", "1=e", "--cert", p("app1.pem"), "--key", p("app1-key.pem"), "--ca", p("ca.pem")}
	for _, tt := range []struct {
		name   string
		client bool
		args   []string
		want   string
	}{
		{"bad method", false, []string{"--revocation", "ocsp-only"}, `--revocation: "ocsp-only" is not crl, ocsp, both or prefer-ocsp`},
		{"ocsp ignores crl files", false, []string{"--revocation", "ocsp", "--crl", p("ca.pem")}, "--crl: given with --revocation ocsp, which does not look at CRLs"},
		{"disabled", false, []string{"--revocation", "both", "--crl-disable"}, "--crl-disable: given with --revocation both"},
		{"get without ocsp", false, []string{"--ocsp-get"}, "--ocsp-get: given without OCSP"},
		{"two staples", false, []string{"--ocsp-staple", "--ocsp-staple-file", "x.der"}, "--ocsp-staple: given with --ocsp-staple-file"},
		{"bad server id", true, []string{"--server-spiffe-id", "spiffe://a.test/x?y"}, `--server-spiffe-id: "spiffe://a.test/x?y" is not a SPIFFE ID`},
		{"server id and name", true, []string{"--server-spiffe-id", "spiffe://a.test/db", "--server-name", "db"}, "--server-name: given with --server-spiffe-id"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd, args := serverCommand(io.Discard), srv
			if tt.client {
				cmd, args = clientCommand(io.Discard), cli
			}
			_, probs := buildSettings(t, cmd, append(slices.Clone(args), tt.args...)...)
			if len(probs) == 0 || !strings.Contains(strings.Join(probs, "\n"), tt.want) {
				t.Fatalf("problems %q, want one containing %q", probs, tt.want)
			}
		})
	}

	s, probs := buildSettings(t, serverCommand(io.Discard), append(slices.Clone(srv), "--revocation", "prefer-ocsp", "--ocsp-get", "--ocsp-staple-file", "/etc/tunnel/staple.der")...)
	if len(probs) > 0 {
		t.Fatal(probs)
	}
	if s.Revocation.Method != trust.RevocationPreferOCSP || !s.Revocation.OCSPGET || s.Server.OCSPStapleFile != "/etc/tunnel/staple.der" {
		t.Errorf("policy %+v, staple file %q", s.Revocation, s.Server.OCSPStapleFile)
	}
	if !slices.Contains(s.Values.Paths(), "/etc/tunnel/staple.der") {
		t.Errorf("the staple file is not watched: %q", s.Values.Paths())
	}
	s, probs = buildSettings(t, serverCommand(io.Discard), srv...)
	if len(probs) > 0 || s.Revocation.Method != trust.RevocationCRL {
		t.Errorf("default method %q (%v), want crl as before OCSP", s.Revocation.Method, probs)
	}
	s, probs = buildSettings(t, clientCommand(io.Discard), append(slices.Clone(cli), "--server-spiffe-id", "spiffe://a.test/db", "--require-ocsp-staple")...)
	if len(probs) > 0 {
		t.Fatal(probs)
	}
	if s.Client.ServerSPIFFEID.String() != "spiffe://a.test/db" || !s.Client.RequireOCSPStaple || len(trustOptions(s, nil)) != 2 {
		t.Errorf("client settings %+v", s.Client)
	}
}

// A key in a PKCS#11 token is no file to watch: its PIN file is. The
// default build refuses the key, saying why.
func TestPKCS11KeyWatchesPINFile(t *testing.T) {
	dir := pki(t)
	pin := filepath.Join(t.TempDir(), "token.pin")
	if err := os.WriteFile(pin, []byte("4711\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	uri := "pkcs11:token=t;object=k?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:" + pin
	v, probs, err := resolveCmd(t, serverCommand(io.Discard), "--allow", "127.0.0.1/32", "--route", "e=127.0.0.1:1",
		"--cert", filepath.Join(dir, "srv.test.pem"), "--key", uri, "--ca", filepath.Join(dir, "ca.pem"))
	if err != nil || len(probs) > 0 {
		t.Fatal(err, probs)
	}
	paths := v.Paths()
	if slices.Contains(paths, uri) || !slices.Contains(paths, pin) {
		t.Errorf("watched paths %q: want the PIN file, not the URI", paths)
	}
	if trust.PKCS11Supported {
		return // the token does not exist; Settings would fail to open it
	}
	if _, probs := v.Settings(); len(probs) == 0 || !strings.Contains(probs[0].String(), "built without PKCS#11 support") {
		t.Errorf("the default build's problem: %v", probs)
	}
}
