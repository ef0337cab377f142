// Package softhsmtest makes a SoftHSM2 token for tests: its own token
// directory (SOFTHSM2_CONF), initialised with softhsm2-util, keys generated
// in it with pkcs11-tool (OpenSC).
package softhsmtest

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Token is an initialised SoftHSM2 token.
type Token struct {
	Label   string
	PIN     string
	PINFile string // holds PIN, mode 0600
	Module  string // the SoftHSM2 PKCS#11 library
	Dir     string
}

// modules are where Debian and others install the SoftHSM2 library.
var modules = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// Require returns the SoftHSM2 module, skipping the test loudly if
// softhsm2-util, pkcs11-tool or the module is missing and CI is unset;
// under CI it fails instead (.ci/run installs softhsm2 and opensc).
func Require(t testing.TB) string {
	t.Helper()
	missing := ""
	for _, tool := range []string{"softhsm2-util", "pkcs11-tool"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = tool
		}
	}
	module := ""
	for _, m := range modules {
		if _, err := os.Stat(m); err == nil {
			module = m
			break
		}
	}
	if module == "" && missing == "" {
		missing = "libsofthsm2.so"
	}
	if missing != "" {
		msg := missing + " not found (apt-get install softhsm2 opensc)"
		if ci := os.Getenv("CI"); ci != "" && ci != "false" {
			t.Fatal(msg)
		}
		t.Skip("!!! SKIPPING the PKCS#11 tests: " + msg)
	}
	return module
}

// NewToken points SOFTHSM2_CONF at a new token directory in dir and
// initialises a token labelled label with user PIN pin. SoftHSM reads
// SOFTHSM2_CONF when the module is first initialised in a process, so one
// test binary should make one token directory.
func NewToken(t testing.TB, dir, label, pin string) *Token {
	t.Helper()
	tk := &Token{Label: label, PIN: pin, Module: Require(t), Dir: dir, PINFile: filepath.Join(dir, "pin")}
	if err := os.MkdirAll(filepath.Join(dir, "tokens"), 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", filepath.Join(dir, "tokens"))
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tk.PINFile, []byte(pin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, "softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", "so-"+pin, "--pin", pin)
	return tk
}

// GenerateKey makes a key pair in the token: keyType as pkcs11-tool takes
// it ("EC:prime256v1", "rsa:2048"), labelled label, with CKA_ID id (hex).
func (tk *Token) GenerateKey(t testing.TB, keyType, label, id string) {
	t.Helper()
	run(t, "pkcs11-tool", "--module", tk.Module, "--token-label", tk.Label, "--login", "--pin", tk.PIN,
		"--keypairgen", "--key-type", keyType, "--label", label, "--id", id)
}

// PublicKey returns the public key of the token key with CKA_ID id (hex),
// read with pkcs11-tool: what a certificate for the key is issued for.
func (tk *Token) PublicKey(t testing.TB, id string) crypto.PublicKey {
	t.Helper()
	out := filepath.Join(t.TempDir(), "pub.der")
	run(t, "pkcs11-tool", "--module", tk.Module, "--token-label", tk.Label, "--read-object", "--type", "pubkey",
		"--id", id, "-o", out)
	der, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		t.Fatalf("public key %s: %v", id, err)
	}
	return pub
}

// URI returns the RFC 7512 URI of the key labelled object, with the PIN
// from pinFile.
func (tk *Token) URI(object, pinFile string) string {
	return fmt.Sprintf("pkcs11:token=%s;object=%s?module-path=%s&pin-source=file:%s", tk.Label, object, tk.Module, pinFile)
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = os.Environ()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", name, err, out)
	}
}
