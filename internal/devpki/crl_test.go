package devpki_test

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/devpki"
)

// readCRL parses dir/crl.pem.
func readCRL(t *testing.T, dir string) *x509.RevocationList {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, devpki.CRLFile))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "X509 CRL" {
		t.Fatalf("crl.pem holds no X509 CRL block")
	}
	crl, err := x509.ParseRevocationList(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return crl
}

func TestRevokeAndCRL(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if _, err := devpki.Init(dir, devpki.Options{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"app1", "app2"} {
		if _, err := devpki.IssueClient(dir, n, devpki.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	serial, _, err := devpki.Revoke(dir, "app1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	crl := readCRL(t, dir)
	ca := readCert(t, filepath.Join(dir, "ca.pem"))
	if err := crl.CheckSignatureFrom(ca); err != nil {
		t.Errorf("CRL signature: %v", err)
	}
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(serial) != 0 {
		t.Errorf("CRL entries %+v, want app1's serial %x", crl.RevokedCertificateEntries, serial)
	}
	if app1 := readCert(t, filepath.Join(dir, "app1.pem")); app1.SerialNumber.Cmp(serial) != 0 {
		t.Error("Revoke returned a serial other than app1's")
	}
	if d := time.Until(crl.NextUpdate); d < 50*time.Minute || d > 70*time.Minute {
		t.Errorf("nextUpdate in %v, want about 1h", d)
	}
	first := crl.Number
	if _, _, err := devpki.Revoke(dir, "app1", 0); !errors.Is(err, devpki.ErrAlreadyRevoked) {
		t.Errorf("second revoke of app1: %v", err)
	}
	if _, _, err := devpki.Revoke(dir, "nobody", 0); err == nil {
		t.Error("revoking a name with no certificate succeeded")
	}
	if _, _, err := devpki.Revoke(dir, "app2", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := devpki.WriteCRL(dir, 0); err != nil {
		t.Fatal(err)
	}
	crl = readCRL(t, dir)
	if len(crl.RevokedCertificateEntries) != 2 {
		t.Errorf("%d entries after revoking app2, want 2", len(crl.RevokedCertificateEntries))
	}
	if crl.Number.Cmp(first) <= 0 {
		t.Errorf("CRL number %v did not grow past %v", crl.Number, first)
	}
	if d := time.Until(crl.NextUpdate); d < devpki.DefaultCRLNextUpdate-time.Hour {
		t.Errorf("default nextUpdate in %v", d)
	}
	// A certificate from another CA is refused.
	other := filepath.Join(t.TempDir(), "other")
	if _, err := devpki.Init(other, devpki.Options{}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "app2.pem"))
	if err := os.WriteFile(filepath.Join(other, "stray.pem"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := devpki.Revoke(other, "stray", 0); err == nil {
		t.Error("revoked a certificate another CA issued")
	}
}
