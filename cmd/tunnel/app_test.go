package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestReorderPositional(t *testing.T) {
	tests := []struct{ in, want []string }{
		{[]string{"tunnel", "cert", "issue", "./pki", "--client", "app1"}, []string{"tunnel", "cert", "issue", "--client", "app1", "./pki"}},
		{[]string{"tunnel", "cert", "init", "./pki"}, []string{"tunnel", "cert", "init", "./pki"}},
		{[]string{"tunnel", "cert", "init", "--force", "./pki"}, []string{"tunnel", "cert", "init", "--force", "./pki"}},
		{[]string{"tunnel", "server", "--listen", "x"}, []string{"tunnel", "server", "--listen", "x"}},
		{[]string{"tunnel"}, []string{"tunnel"}},
	}
	for _, tt := range tests {
		if got := reorderPositional(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("reorderPositional(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// pki makes a dev PKI with the cert command, as a user would.
func pki(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	for _, args := range [][]string{
		{"tunnel", "cert", "init", dir},
		{"tunnel", "cert", "issue", dir, "--server", "srv.test", "--ip", "127.0.0.1", "--dns", "localhost"},
		{"tunnel", "cert", "issue", dir, "--client", "app1"},
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != 0 {
			t.Fatalf("%q: exit %d: %s", args, code, errb.String())
		}
	}
	return dir
}

func TestCertCommand(t *testing.T) {
	dir := pki(t)
	for _, f := range []string{"ca.pem", "ca-key.pem", "srv.test.pem", "srv.test-key.pem", "app1.pem", "app1-key.pem"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f, "-key.pem") && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	// Issuing again without --force refuses and changes nothing.
	before, _ := os.ReadFile(filepath.Join(dir, "app1-key.pem"))
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"tunnel", "cert", "issue", dir, "--client", "app1"}, &out, &errb); code != exitConfig {
		t.Fatalf("reissue without --force: exit %d, want %d", code, exitConfig)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "app1-key.pem"))
	if !bytes.Equal(before, after) {
		t.Fatal("key overwritten without --force")
	}
}

// Every configuration error is one line on stderr naming the flag, exit 2,
// and nothing starts.
func TestServerConfigErrors(t *testing.T) {
	dir := pki(t)
	p := func(f string) string { return filepath.Join(dir, f) }
	good := []string{"tunnel", "server", "--listen", "127.0.0.1:0",
		"--cert", p("srv.test.pem"), "--key", p("srv.test-key.pem"), "--ca", p("ca.pem"),
		"--allow", "127.0.0.1/32", "--route", "db=127.0.0.1:5432"}
	with := func(flag, value string) []string {
		out := slices.Clone(good)
		if i := slices.Index(out, flag); i >= 0 {
			if value == "" {
				return slices.Delete(out, i, i+2)
			}
			out[i+1] = value
			return out
		}
		return append(out, flag, value)
	}
	tests := []struct {
		name string
		args []string
		flag string
	}{
		{"no allow", with("--allow", ""), "--allow"},
		{"bad CIDR", with("--allow", "10.0.0.300/8"), "--allow"},
		{"host bits", with("--allow", "10.0.0.1/8"), "--allow"},
		{"bad route", with("--route", "db"), "--route"},
		{"no route", with("--route", ""), "--route"},
		{"bad listen", with("--listen", "nohost"), "--listen"},
		{"listen hostname", with("--listen", "example.com:8443"), "--listen"},
		{"missing cert", with("--cert", p("nope.pem")), "--cert"},
		{"key mismatch", with("--key", p("app1-key.pem")), "--key"},
		{"CA without cert", with("--ca", p("ca-key.pem")), "--ca"},
		{"bad log format", with("--log-format", "xml"), "--log-format"},
		{"negative timeout", with("--dial-timeout", "-1s"), "--dial-timeout"},
		{"zero first byte", with("--first-byte-timeout", "0s"), "--first-byte-timeout"},
		{"negative client hello", with("--client-hello-timeout", "-1s"), "--client-hello-timeout"},
		{"zero pending", with("--max-pending", "0"), "--max-pending"},
		{"unknown flag", with("--bogus", "1"), "bogus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), tt.args, &out, &errb)
			if code != exitConfig {
				t.Fatalf("exit %d, want %d; stderr: %s", code, exitConfig, errb.String())
			}
			lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], tt.flag) {
				t.Fatalf("stderr = %q, want one line naming %s", errb.String(), tt.flag)
			}
		})
	}
}

func TestClientConfigErrors(t *testing.T) {
	dir := pki(t)
	p := func(f string) string { return filepath.Join(dir, f) }
	base := []string{"tunnel", "client", "--cert", p("app1.pem"), "--key", p("app1-key.pem"), "--ca", p("ca.pem")}
	tests := []struct {
		name  string
		extra []string
		flag  string
	}{
		{"no server", []string{"--forward", "0=db"}, "--server"},
		{"server without port", []string{"--server", "host", "--forward", "0=db"}, "--server"},
		{"no forward", []string{"--server", "127.0.0.1:1"}, "--forward"},
		{"bad forward", []string{"--server", "127.0.0.1:1", "--forward", "db"}, "--forward"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), append(slices.Clone(base), tt.extra...), &out, &errb)
			if code != exitConfig || !strings.Contains(errb.String(), tt.flag) || strings.Count(strings.TrimSpace(errb.String()), "\n") != 0 {
				t.Fatalf("exit %d, stderr %q; want exit 2 and one line naming %s", code, errb.String(), tt.flag)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"tunnel", "version"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if s := out.String(); !strings.Contains(s, "go1.") || !strings.Contains(s, "commit") {
		t.Fatalf("version output %q lacks the Go version or commit", s)
	}
}
