package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/devpki"
	"github.com/tunnel-dev/tunnel/internal/softhsmtest"
)

// pkcs11Bin is the tunnel binary built with -tags pkcs11 (and the test
// hooks), once, by the first test that needs it.
var (
	pkcs11Once sync.Once
	pkcs11Bin  string
	pkcs11Err  error
)

func tunnelPKCS11(t *testing.T) string {
	t.Helper()
	pkcs11Once.Do(func() {
		dir := filepath.Dir(tunnelBin)
		pkcs11Bin, pkcs11Err = buildTunnelTags(dir, "tunnel-pkcs11", "tunnel_testhooks,pkcs11")
	})
	if pkcs11Err != nil {
		t.Fatal(pkcs11Err)
	}
	return pkcs11Bin
}

// The binary built with -tags pkcs11 (make build-pkcs11) serves a session
// whose server key (EC P-256) and client key (RSA 2048) live in a SoftHSM2
// token made here: bytes go through intact, and a wrong PIN stops the start
// with exit status 2 and a line that says so.
func TestPKCS11KeysThroughBinary(t *testing.T) {
	softhsmtest.Require(t)
	bin := tunnelPKCS11(t)
	dir, err := os.MkdirTemp("", "e2e-softhsm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	tk := softhsmtest.NewToken(t, dir, "e2e-token", "2468")
	tk.GenerateKey(t, "EC:prime256v1", "server-key", "01")
	tk.GenerateKey(t, "rsa:2048", "client-key", "02")
	env := []string{"SOFTHSM2_CONF=" + filepath.Join(dir, "softhsm2.conf")}

	ca, err := devpki.NewCA("e2e token CA", devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	issue := func(name string, usage x509.ExtKeyUsage, pub crypto.PublicKey) string {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
			DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name+".pem")
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	srvCert := issue("tunnel-srv", x509.ExtKeyUsageServerAuth, tk.PublicKey(t, "01"))
	cliCert := issue("app1", x509.ExtKeyUsageClientAuth, tk.PublicKey(t, "02"))

	echo := echoBackend(t)
	srv := startProcBin(t, bin, env, "server", "--listen", "127.0.0.1:0", "--allow", "127.0.0.1/32",
		"--cert", srvCert, "--key", tk.URI("server-key", tk.PINFile), "--ca", caFile, "--route", "echo="+echo,
		"--log-format", "json", "--log-level", "debug")
	cli := startProcBin(t, bin, env, "client", "--server", srv.addr(t), "--server-name", "localhost",
		"--cert", cliCert, "--key", tk.URI("client-key", tk.PINFile), "--ca", caFile, "--forward", "127.0.0.1:0=echo",
		"--log-format", "json", "--log-level", "debug")
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	start := time.Now()
	echoCheck(t, cli.forwardAddr(t, "echo"), 16, 4<<20)
	t.Logf("4 MiB through the tunnel with both keys in the token, SHA-256 intact, in %v", time.Since(start).Round(time.Millisecond))

	wrong := filepath.Join(dir, "wrong.pin")
	if err := os.WriteFile(wrong, []byte("1111\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := startProcBin(t, bin, env, "server", "--listen", "127.0.0.1:0", "--allow", "127.0.0.1/32",
		"--cert", srvCert, "--key", tk.URI("server-key", wrong), "--ca", caFile, "--route", "echo="+echo)
	if code := bad.wait(t, waitTimeout); code != 2 {
		t.Errorf("wrong PIN: exit status %d, want 2", code)
	}
	out := strings.Join(bad.lines, "\n")
	if !strings.Contains(out, "wrong PIN") || strings.Contains(out, "1111") {
		t.Errorf("wrong PIN: the start-up error does not say so, or repeats the PIN:\n%s", out)
	}

	// tunnel check finds the token and the key, or says which is missing.
	checkArgs := func(uri string) []string {
		return []string{"check", "--role", "server", "--listen", "127.0.0.1:0", "--allow", "127.0.0.1/32",
			"--cert", srvCert, "--key", uri, "--ca", caFile, "--route", "echo=" + echo}
	}
	if stdout, stderr, code := runBin(t, bin, env, checkArgs(tk.URI("server-key", tk.PINFile))...); code != 0 || !strings.Contains(stdout, "server configuration OK") {
		t.Errorf("tunnel check with the key in the token: exit %d\n%s%s", code, stdout, stderr)
	}
	if _, stderr, code := runBin(t, bin, env, checkArgs(tk.URI("no-such-key", tk.PINFile))...); code != 2 || !strings.Contains(stderr, `--key: `) || !strings.Contains(stderr, `no private key with object "no-such-key"`) {
		t.Errorf("tunnel check with a missing object: exit %d, stderr %q", code, stderr)
	}
	if _, stderr, code := runBin(t, bin, env, checkArgs(strings.Replace(tk.URI("server-key", tk.PINFile), "token=e2e-token", "token=no-token", 1))...); code != 2 || !strings.Contains(stderr, "no such token") {
		t.Errorf("tunnel check with a missing token: exit %d, stderr %q", code, stderr)
	}

	// The PIN file is watched, as a key file would be (the URI is not a
	// file): a change to it reloads, and the key is found again.
	pinBody, err := os.ReadFile(tk.PINFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tk.PINFile, append(pinBody[:len(pinBody)-1], '\r', '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	srv.waitEvent(t, waitTimeout, "reload on the PIN file's change", isEvent("reload_applied", "trigger", "file_changed"))
	echoCheck(t, cli.forwardAddr(t, "echo"), 17, 1<<20)
}

// runBin runs the tunnel binary bin with extra environment to its end and
// returns its output and exit code.
func runBin(t *testing.T, bin string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		return so.String(), se.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("tunnel %s: %v", strings.Join(args, " "), err)
	}
	return so.String(), se.String(), 0
}
