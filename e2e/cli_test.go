package e2e

import (
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestConfigErrors checks that each invalid setting stops the process before
// it starts, with exit status 2 and one line on stderr naming the flag.
// Each case is a known-good baseline with one change.
func TestConfigErrors(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	noCert := filepath.Join(t.TempDir(), "empty-ca.pem")
	if err := os.WriteFile(noCert, []byte("this file holds no certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { taken.Close() })

	server := serverArgs(pk, "127.0.0.1:0", "echo=127.0.0.1:9")
	client := clientArgs(pk, "127.0.0.1:9", "echo")

	t.Run("baselines start", func(t *testing.T) {
		t.Parallel()
		startProc(t, server...).addr(t)
		startProc(t, client...).forwardAddr(t, "echo")
	})

	for _, tc := range []struct {
		name string
		args []string
		flag []string // the line names one of these
	}{
		{"server without --allow", withoutFlag(server, "--allow"), []string{"--allow"}},
		{"bad CIDR", withFlag(server, "--allow", "10.0.0.0/33"), []string{"--allow"}},
		{"bad allow address", withFlag(server, "--allow", "not-an-ip"), []string{"--allow"}},
		{"route without target", withFlag(server, "--route", "db"), []string{"--route"}},
		{"route with a bad port", withFlag(server, "--route", "db=127.0.0.1:99999"), []string{"--route"}},
		{"bad listen address", withFlag(server, "--listen", "127.0.0.1:notaport"), []string{"--listen"}},
		{"cert and key mismatch", withFlag(server, "--key", pk.clientKey), []string{"--key", "--cert"}},
		{"missing key file", withFlag(server, "--key", filepath.Join(pk.dir, "nope-key.pem")), []string{"--key"}},
		{"CA file without a certificate", withFlag(server, "--ca", noCert), []string{"--ca"}},
		{"client CA file without a certificate", withFlag(client, "--ca", noCert), []string{"--ca"}},
		{"client forward port taken", withFlag(client, "--forward", taken.Addr().String()+"=echo"), []string{"--forward"}},
		{"client forward without route", withFlag(client, "--forward", "127.0.0.1:0"), []string{"--forward"}},
		{"missing CRL file", withFlag(server, "--crl", filepath.Join(pk.dir, "nope.crl")), []string{"--crl"}},
		{"CRL file that is no CRL", withFlag(server, "--crl", noCert), []string{"--crl"}},
		{"client CRL file that is no CRL", withFlag(client, "--crl", pk.ca), []string{"--crl"}},
		{"CRL files with revocation disabled", append(withFlag(server, "--crl", noCert), "--crl-disable"), []string{"--crl-disable"}},
		{"CRL refresh too often", withFlag(server, "--crl-refresh-interval", "10ms"), []string{"--crl-refresh-interval"}},
		{"admin on a non-loopback address", withFlag(server, "--admin", "0.0.0.0:0"), []string{"--admin"}},
		{"client admin address without a port", withFlag(client, "--admin", "127.0.0.1"), []string{"--admin"}},
		{"CRL response cap too small", withFlag(server, "--crl-max-response-bytes", "10"), []string{"--crl-max-response-bytes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, stderr, code := runTunnel(t, tc.args...)
			lines := scanLines(stderr)
			if code != 2 {
				t.Errorf("exit status = %d, want 2", code)
			}
			if len(lines) != 1 {
				t.Errorf("stderr has %d lines, want 1:\n%s", len(lines), stderr)
			}
			named := false
			for _, f := range tc.flag {
				named = named || strings.Contains(stderr, f)
			}
			if !named {
				t.Errorf("stderr does not name any of %q:\n%s", tc.flag, stderr)
			}
		})
	}
}

// TestVersionAndHelp checks what a user reads first.
func TestVersionAndHelp(t *testing.T) {
	t.Parallel()
	t.Run("version", func(t *testing.T) {
		out, stderr, code := runTunnel(t, "version")
		if code != 0 {
			t.Fatalf("tunnel version: exit %d\n%s", code, stderr)
		}
		for _, want := range []string{"tunnel", runtime.Version(), "commit"} {
			if !strings.Contains(out, want) {
				t.Errorf("tunnel version output lacks %q:\n%s", want, out)
			}
		}
		for _, flag := range []string{"--version", "-v"} {
			if got, _, code := runTunnel(t, flag); code != 0 || got != out {
				t.Errorf("tunnel %s: exit %d, %q; want what tunnel version prints, %q", flag, code, got, out)
			}
		}
	})
	for _, tc := range []struct {
		args []string
		want []string // substrings, matched case-insensitively
	}{
		// An example is a full command line; the root help's usage is one.
		{[]string{"--help"}, []string{"tunnel server --listen", "tunnel client --server", "cert", "version"}},
		{[]string{"server", "--help"}, []string{"example", "tunnel server --listen", "TUNNEL_LISTEN", "--allow", "--route"}},
		{[]string{"client", "--help"}, []string{"example", "tunnel client --server", "TUNNEL_SERVER", "--forward", "--server-name"}},
		{[]string{"cert", "--help"}, []string{"example", "tunnel cert init", "tunnel cert issue"}},
		{[]string{"check", "--help"}, []string{"tunnel check - load a server or client configuration", "--role", "tunnel server --help"}},
		{[]string{"cert", "issue", "--help"}, []string{"--uri", "--ou", "spiffe"}},
		{[]string{"completion", "--help"}, []string{"tunnel completion bash", "zsh", "fish"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, stderr, code := runTunnel(t, tc.args...)
			if code != 0 {
				t.Fatalf("exit %d\n%s", code, stderr)
			}
			all := strings.ToLower(out + stderr)
			for _, w := range tc.want {
				if !strings.Contains(all, strings.ToLower(w)) {
					t.Errorf("help lacks %q:\n%s", w, out+stderr)
				}
			}
		})
	}
}
