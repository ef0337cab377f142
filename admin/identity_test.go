package admin_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tunnel-dev/tunnel/admin"
	"github.com/tunnel-dev/tunnel/internal/devpki"
	"github.com/tunnel-dev/tunnel/trust"
)

// fileSource loads a fresh certificate, key and CA into a FileSource.
func fileSource(t *testing.T) (*trust.FileSource, trust.Sources) {
	t.Helper()
	ca, err := devpki.NewCA("admin test CA", devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := devpki.NewLeaf(ca, &x509.Certificate{Subject: pkix.Name{CommonName: "srv"}, DNSNames: []string{"srv"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	src := trust.Sources{CertFile: filepath.Join(dir, "c.pem"), KeyFile: filepath.Join(dir, "k.pem"), CAFile: filepath.Join(dir, "ca.pem")}
	for p, b := range map[string][]byte{src.CertFile: leaf.CertPEM, src.KeyFile: leaf.KeyPEM, src.CAFile: ca.CertPEM} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	m, err := trust.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	return trust.FileSourceOf(src, m), src
}

// /readyz adds the notes to its answer, 200 or 503; the identity metrics
// follow the source's state with its kind as the only label.
func TestIdentityReadyAndMetrics(t *testing.T) {
	defer http.DefaultClient.CloseIdleConnections()
	src, _ := fileSource(t)
	var notes []string
	var notReady error
	rc := trust.NewRevocationChecker(trust.DefaultRevocationPolicy(), trust.NewStore(src.Material()), nil)
	defer rc.Close()
	h, err := admin.NewHandler(admin.Config{
		Ready: func() error { return notReady },
		Notes: func() []string { return notes },
		Collectors: []prometheus.Collector{admin.IdentityCollector(src, func() uint64 { return 3 }),
			admin.OCSPCollector(rc)},
	})
	if err != nil {
		t.Fatal(err)
	}
	u := serve(t, h)
	if code, body := do(t, "GET", u+"/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz without notes: %d %q", code, body)
	}
	notes = []string{"identity source file (c.pem) is stale", "ocsp staple: none stapled"}
	if code, body := do(t, "GET", u+"/readyz"); code != 200 || body != "ready\nidentity source file (c.pem) is stale\nocsp staple: none stapled\n" {
		t.Errorf("/readyz with notes: %d %q", code, body)
	}
	notReady = errors.New("identity source file (c.pem) is expired")
	if code, body := do(t, "GET", u+"/readyz"); code != 503 || !strings.HasPrefix(body, "not ready: identity source file (c.pem) is expired\nidentity source file") {
		t.Errorf("/readyz not ready with notes: %d %q", code, body)
	}

	_, body := do(t, "GET", u+"/metrics")
	for _, want := range []string{
		`tunnel_identity_source_up{kind="file"} 1`,
		`tunnel_identity_source_state{kind="file",state="ok"} 1`,
		`tunnel_identity_source_state{kind="file",state="stale"} 0`,
		`tunnel_identity_updates_total{kind="file"} 1`,
		`tunnel_identity_source_failures_total{kind="file"} 0`,
		`tunnel_identity_sessions_closed_total{kind="file"} 3`,
		`tunnel_identity_expiry_seconds{kind="file"} `,
		`tunnel_ocsp_fetches_total{result="ok"} 0`,
		`tunnel_ocsp_cached 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	src.Record(nil, errors.New("tls.key: does not match certificate"))
	_, body = do(t, "GET", u+"/metrics")
	for _, want := range []string{
		`tunnel_identity_source_up{kind="file"} 0`,
		`tunnel_identity_source_state{kind="file",state="stale"} 1`,
		`tunnel_identity_source_failures_total{kind="file"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics after a failed load lacks %q", want)
		}
	}
}
