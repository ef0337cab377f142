package config

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunnel-dev/tunnel/trust"
)

// A PIN file that group or others can read is warned about as a key file
// is.
func TestPINFileModeWarning(t *testing.T) {
	pin := filepath.Join(t.TempDir(), "token.pin")
	if err := os.WriteFile(pin, []byte("4711\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	v, probs := Resolve(testInput(t, "", nil))
	if len(probs) > 0 {
		t.Fatal(probs)
	}
	s := &Settings{Values: v, TLS: trust.Sources{KeyFile: "pkcs11:token=t;object=k?module-path=/usr/lib/m.so&pin-source=file:" + pin}}
	ws := s.Warnings()
	if len(ws) != 1 || ws[0].Kind != WarnKeyFileMode || !strings.Contains(ws[0].Msg, "PKCS#11 PIN file") {
		t.Fatalf("warnings %+v, want one about the PIN file's mode", ws)
	}
	if err := os.Chmod(pin, 0o600); err != nil {
		t.Fatal(err)
	}
	if ws := s.Warnings(); len(ws) != 0 {
		t.Errorf("warnings with mode 0600: %+v", ws)
	}
}

// With OCSP in use, a CA of the bundle whose responder the fetcher would
// never ask (the cloud metadata address) is warned about; with CRLs only it
// is not looked at.
func TestOCSPURLRefusedWarning(t *testing.T) {
	v, probs := Resolve(testInput(t, "", nil))
	if len(probs) > 0 {
		t.Fatal(probs)
	}
	inter := &x509.Certificate{Subject: pkix.Name{CommonName: "Issuing CA"}, SerialNumber: big.NewInt(7),
		OCSPServer: []string{"http://169.254.169.254/ocsp", "http://ocsp.example.com/"}}
	p := trust.DefaultRevocationPolicy()
	p.Method = trust.RevocationOCSP
	s := &Settings{Values: v, Material: &trust.Material{CACerts: []*x509.Certificate{inter}}, Revocation: p}
	ws := s.Warnings()
	if len(ws) != 1 || ws[0].Kind != WarnOCSPURLRefused || ws[0].Key != "tls.ca" || !strings.Contains(ws[0].Msg, "169.254.169.254") {
		t.Fatalf("warnings %+v, want one about the metadata responder", ws)
	}
	s.Revocation.Method = trust.RevocationCRL
	if ws := s.Warnings(); len(ws) != 0 {
		t.Errorf("with CRLs only: %+v", ws)
	}
}
