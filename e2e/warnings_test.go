package e2e

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAllowlistCoverageWarned: start-up and tunnel check warn about an
// allowlist that admits every IPv4 or IPv6 address, however it is written.
func TestAllowlistCoverageWarned(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	base := withoutFlag(serverArgs(pk, "127.0.0.1:0", "echo=127.0.0.1:9"), "--allow")
	for _, tt := range []struct {
		allow []string
		want  []string // families warned about
	}{
		{[]string{"0.0.0.0/1", "128.0.0.0/1"}, []string{"IPv4"}},
		{[]string{"::/1", "8000::/1"}, []string{"IPv6"}},
		{[]string{"::ffff:0.0.0.0/96"}, []string{"IPv4"}},
		{[]string{"0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/1", "::/0"}, []string{"IPv4", "IPv6"}},
		{[]string{"0.0.0.0/0"}, []string{"IPv4"}},
		{[]string{"127.0.0.0/8", "10.0.0.0/8", "::1"}, nil},
	} {
		args := base
		for _, a := range tt.allow {
			args = append(args, "--allow", a)
		}
		srv := startProc(t, args...)
		srv.addr(t)
		warned := srv.matching(isEvent("config_warning", "warning", "allow_covers_all"))
		stdout, stderr, code := runTunnel(t, append([]string{"check", "--role"}, args...)...)
		if code != 0 {
			t.Fatalf("tunnel check %v: exit %d\n%s", tt.allow, code, stderr)
		}
		if len(warned) != len(tt.want) {
			t.Errorf("%v: %d allow_covers_all warnings at start-up, want %d", tt.allow, len(warned), len(tt.want))
		}
		for i, fam := range tt.want {
			if i < len(warned) && !strings.Contains(warned[i]["msg"].(string), "admits every "+fam+" address") {
				t.Errorf("%v: start-up warning %q does not name %s", tt.allow, warned[i]["msg"], fam)
			}
			if !strings.Contains(stdout, "warning: --allow: ") || !strings.Contains(stdout, "admits every "+fam+" address") {
				t.Errorf("%v: tunnel check does not warn about %s:\n%s", tt.allow, fam, stdout)
			}
		}
		if tt.want == nil && strings.Contains(stdout, "admits every") {
			t.Errorf("%v: tunnel check warns:\n%s", tt.allow, stdout)
		}
	}
}

// TestKeyFileModeWarned: a private key that group or others can read is
// warned about at start-up and by tunnel check, on both roles.
func TestKeyFileModeWarned(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	data, err := os.ReadFile(pk.serverKey)
	if err != nil {
		t.Fatal(err)
	}
	loose := filepath.Join(t.TempDir(), "server-key.pem")
	if err := os.WriteFile(loose, data, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(loose, 0o644) // whatever the umask
	for _, tt := range []struct {
		key  string
		warn bool
	}{{loose, true}, {pk.serverKey, false}} {
		args := withFlag(serverArgs(pk, "127.0.0.1:0", "echo=127.0.0.1:9"), "--key", tt.key)
		srv := startProc(t, args...)
		srv.addr(t)
		ws := srv.matching(isEvent("config_warning", "warning", "key_file_mode"))
		stdout, _, _ := runTunnel(t, append([]string{"check", "--role"}, args...)...)
		if got := len(ws) == 1 && strings.Contains(ws[0]["msg"].(string), "mode 0644"); got != tt.warn {
			t.Errorf("key %s: start-up warnings %v, want a mode-0644 warning: %v", tt.key, ws, tt.warn)
		}
		if got := strings.Contains(stdout, "warning: --key: private key file") && strings.Contains(stdout, "mode 0644"); got != tt.warn {
			t.Errorf("key %s: tunnel check warns %v, want %v:\n%s", tt.key, got, tt.warn, stdout)
		}
	}
	cdata, err := os.ReadFile(pk.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	cloose := filepath.Join(t.TempDir(), "client-key.pem")
	if err := os.WriteFile(cloose, cdata, 0o640); err != nil {
		t.Fatal(err)
	}
	os.Chmod(cloose, 0o640)
	cli := startProc(t, withFlag(clientArgs(pk, "127.0.0.1:9", "echo"), "--key", cloose)...)
	cli.waitEvent(t, waitTimeout, "client key warning", isEvent("config_warning", "warning", "key_file_mode"))
}

// TestCAClientCertificateRefused: a certificate with basic constraints
// CA:TRUE is not a client certificate, whatever its usages.
func TestCAClientCertificateRefused(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	ca := loadCA(t, pk)
	tmpl := clientTmpl("sub-ca")
	tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	tmpl.KeyUsage |= x509.KeyUsageCertSign
	_, certPEM, keyPEM := leafPEM(t, ca, tmpl)
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "sub-ca.pem"), filepath.Join(dir, "sub-ca-key.pem")
	os.WriteFile(cert, certPEM, 0o600)
	os.WriteFile(key, keyPEM, 0o600)
	srv := startProc(t, serverArgs(pk, "127.0.0.1:0", "echo="+echoBackend(t))...)
	startProc(t, withFlag(withFlag(clientArgs(pk, srv.addr(t), "echo"), "--cert", cert), "--key", key)...)
	ev := srv.waitEvent(t, waitTimeout, "handshake_failed ca_certificate", isEvent("handshake_failed", "reason", "ca_certificate"))
	if !strings.Contains(ev["error"].(string), "CA certificate") {
		t.Errorf("error %q", ev["error"])
	}
	// The same names without the CA flag pass.
	ok := startProc(t, clientArgs(pk, srv.addr(t), "echo")...)
	ok.waitEvent(t, waitTimeout, "session", isEvent("session_opened"))
}

// TestCNRuleLimits: a cn: rule does not decide for a leaf with several
// CNs, nor for a CN-only leaf of a name-constrained CA; a SAN the
// constraints checked makes the CN count again.
func TestCNRuleLimits(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	echo := echoBackend(t)
	root := issueCert(t, func() *x509.Certificate {
		c := caTemplate("e2e Constrained Root")
		c.PermittedDNSDomains = []string{"corp.example"}
		return c
	}(), nil)
	dir := t.TempDir()
	rootFile := filepath.Join(dir, "constrained.pem")
	bundle := filepath.Join(dir, "bundle.pem")
	writeFileAtomic(t, rootFile, certPEM(root))
	pkCA, err := os.ReadFile(pk.ca)
	if err != nil {
		t.Fatal(err)
	}
	writeFileAtomic(t, bundle, append(pkCA, certPEM(root)...))
	cfg := filepath.Join(dir, "server.yaml")
	writeFileAtomic(t, cfg, fmt.Appendf(nil, `listen: 127.0.0.1:0
allow: [127.0.0.1/32]
routes:
  - {name: app1, target: %[1]s, allow_identities: ["cn:app1"]}
  - {name: admin, target: %[1]s, allow_identities: ["cn:admin"]}
  - {name: dns, target: %[1]s, allow_identities: ["cn:nobody", "dns:*.corp.example"]}
`, echo))
	args := withoutFlag(withoutFlag(withFlag(serverArgs(pk, "127.0.0.1:0"), "--ca", bundle), "--allow"), "--listen")
	srv := startProc(t, append(args, "--config", cfg)...)
	addr := srv.addr(t)

	client := func(name string, parent *ca, mod func(*x509.Certificate)) *proc {
		tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: name}, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		if mod != nil {
			mod(tmpl)
		}
		var l *ca
		if parent == nil {
			kp := loadCA(t, pk)
			l = issueCert(t, tmpl, &ca{cert: kp.Cert, key: kp.Key})
		} else {
			l = issueCert(t, tmpl, parent)
		}
		cert, key := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		writeFileAtomic(t, cert, certPEM(l))
		writeFileAtomic(t, key, keyPEM(t, l))
		c := startProc(t, withFlag(withFlag(clientArgs(pk, addr, "app1", "admin", "dns"), "--cert", cert), "--key", key)...)
		c.waitEvent(t, waitTimeout, "session of "+name, isEvent("session_opened"))
		return c
	}
	oidCN := asn1.ObjectIdentifier{2, 5, 4, 3}
	twoCNs := client("two-cns", nil, func(c *x509.Certificate) {
		c.Subject = pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{{Type: oidCN, Value: "admin"}, {Type: oidCN, Value: "app1"}}}
	})
	cnOnly := client("cn-only", root, func(c *x509.Certificate) { c.Subject.CommonName = "admin" })
	withSAN := client("with-san", root, func(c *x509.Certificate) {
		c.Subject.CommonName = "admin"
		c.DNSNames = []string{"admin.corp.example"}
	})
	plain := client("app1", nil, nil)

	refusedFor := func(cli *proc, route, reason string) {
		t.Helper()
		forbidden(t, cli, route)
		srv.waitEvent(t, waitTimeout, route+" refused: "+reason, isEvent("stream_refused", "route", route, "reason", reason))
	}
	refusedFor(twoCNs, "app1", "multiple_common_names")  // crypto/x509 reports app1, the last
	refusedFor(twoCNs, "admin", "multiple_common_names") // nor the first
	refusedFor(cnOnly, "admin", "common_name_unconstrained")
	echoCheck(t, withSAN.forwardAddr(t, "admin"), 1, 4<<10) // its SAN passed the constraint
	echoCheck(t, withSAN.forwardAddr(t, "dns"), 2, 4<<10)
	refusedFor(cnOnly, "dns", "identity_not_allowed")
	echoCheck(t, plain.forwardAddr(t, "app1"), 3, 4<<10) // one CN, no constraints
}
