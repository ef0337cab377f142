package trust_test

import (
	"crypto"
	"crypto/x509"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/tunnel-dev/tunnel/internal/devpki"
	"github.com/tunnel-dev/tunnel/trust"
)

// An OCSP response is hostile input (a responder, or a server's staple):
// VerifyOCSP must never panic, and anything it accepts says good, revoked
// or unknown.
func FuzzVerifyOCSP(f *testing.F) {
	ca, err := devpki.NewCA("Fuzz CA", devpki.Options{})
	if err != nil {
		f.Fatal(err)
	}
	leaf, err := devpki.NewLeaf(ca, leafTmpl("app", x509.ExtKeyUsageClientAuth), devpki.Options{})
	if err != nil {
		f.Fatal(err)
	}
	now := time.Now()
	for _, status := range []int{ocsp.Good, ocsp.Revoked, ocsp.Unknown} {
		der, err := ocsp.CreateResponse(ca.Cert, ca.Cert, ocsp.Response{Status: status, SerialNumber: leaf.Cert.SerialNumber,
			ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(time.Hour), RevokedAt: now.Add(-time.Hour),
			IssuerHash: crypto.SHA1}, ca.Key)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(der)
	}
	f.Add(ocsp.TryLaterErrorResponse)
	f.Fuzz(func(t *testing.T, der []byte) {
		st, err := trust.VerifyOCSP(der, leaf.Cert, ca.Cert, nil, now)
		if err != nil {
			return
		}
		if st.Status != ocsp.Good && st.Status != ocsp.Revoked && st.Status != ocsp.Unknown {
			t.Fatalf("accepted status %d", st.Status)
		}
	})
}
