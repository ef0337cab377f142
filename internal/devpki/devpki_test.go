package devpki_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/devpki"
	"github.com/tunnel-dev/tunnel/trust"
)

// readCert parses the single certificate of the PEM file at path.
func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		t.Fatalf("%s: no PEM certificate", path)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func checkMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s mode = %v, want %v", path, got, want)
	}
}

// initCA runs Init in a fresh directory and returns the directory.
func initCA(t *testing.T, opt devpki.Options) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	if _, err := devpki.Init(dir, opt); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return dir
}

func TestInitIssue(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	paths, err := devpki.Init(dir, devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	caCert, caKey := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if !slices.Equal(slices.Sorted(slices.Values(paths)), []string{caKey, caCert}) {
		t.Errorf("Init paths = %v, want %s and %s", paths, caCert, caKey)
	}
	checkMode(t, dir, 0o700)
	checkMode(t, caCert, 0o644)
	checkMode(t, caKey, 0o600)
	ca := readCert(t, caCert)
	if !ca.IsCA || !ca.MaxPathLenZero || ca.MaxPathLen != 0 || len(ca.SubjectKeyId) == 0 ||
		!strings.HasPrefix(ca.Subject.CommonName, "tunnel dev CA ") ||
		ca.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign|x509.KeyUsageDigitalSignature {
		t.Errorf("CA certificate: IsCA %v, MaxPathLen %d/%v, SKI %x, CN %q, KeyUsage %v",
			ca.IsCA, ca.MaxPathLen, ca.MaxPathLenZero, ca.SubjectKeyId, ca.Subject.CommonName, ca.KeyUsage)
	}
	if d := time.Until(ca.NotAfter); d < 3649*24*time.Hour || d > 3651*24*time.Hour {
		t.Errorf("CA validity ends in %v, want about 3650 days", d)
	}
	if _, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("CA key is %T, want ECDSA", ca.PublicKey)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)

	spaths, err := devpki.IssueServer(dir, "server.test", []string{"alt.test"}, []net.IP{net.ParseIP("127.0.0.1")}, devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(spaths) != 2 {
		t.Errorf("IssueServer paths = %v", spaths)
	}
	checkMode(t, filepath.Join(dir, "server.test.pem"), 0o644)
	checkMode(t, filepath.Join(dir, "server.test-key.pem"), 0o600)
	srv := readCert(t, filepath.Join(dir, "server.test.pem"))
	for _, host := range []string{"server.test", "alt.test", "127.0.0.1"} {
		if _, err := srv.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("server certificate for %s: %v", host, err)
		}
	}
	if err := trust.CheckLeaf(srv, x509.ExtKeyUsageServerAuth); err != nil {
		t.Errorf("CheckLeaf(server, serverAuth) = %v", err)
	}
	if trust.CheckLeaf(srv, x509.ExtKeyUsageClientAuth) == nil {
		t.Error("server certificate passes as clientAuth")
	}
	if srv.SerialNumber.Sign() <= 0 || srv.SerialNumber.BitLen() > 128 || srv.SerialNumber.BitLen() < 64 {
		t.Errorf("serial %x: want a positive random 128-bit number", srv.SerialNumber)
	}
	if !bytes.Equal(srv.AuthorityKeyId, ca.SubjectKeyId) || len(srv.SubjectKeyId) == 0 {
		t.Errorf("AKI %x, SKI %x; want AKI = CA SKI %x", srv.AuthorityKeyId, srv.SubjectKeyId, ca.SubjectKeyId)
	}
	if srv.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("ECDSA server KeyUsage = %v, want digitalSignature only", srv.KeyUsage)
	}
	if d := time.Until(srv.NotAfter); d < 824*24*time.Hour || d > 826*24*time.Hour {
		t.Errorf("leaf validity ends in %v, want about 825 days", d)
	}

	if _, err := devpki.IssueClient(dir, "app1", devpki.Options{Days: 10}); err != nil {
		t.Fatal(err)
	}
	cli := readCert(t, filepath.Join(dir, "app1.pem"))
	checkMode(t, filepath.Join(dir, "app1-key.pem"), 0o600)
	if _, err := cli.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, err := cli.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("client certificate verifies as serverAuth")
	}
	if err := trust.CheckLeaf(cli, x509.ExtKeyUsageClientAuth); err != nil {
		t.Errorf("CheckLeaf(client, clientAuth) = %v", err)
	}
	if cli.Subject.CommonName != "app1" || time.Until(cli.NotAfter) > 11*24*time.Hour {
		t.Errorf("client CN %q, NotAfter %v; want app1, 10 days", cli.Subject.CommonName, cli.NotAfter)
	}

	for _, name := range []string{"server.test", "app1"} {
		_, err := trust.Load(trust.Sources{
			CertFile: filepath.Join(dir, name+".pem"),
			KeyFile:  filepath.Join(dir, name+"-key.pem"),
			CAFile:   caCert,
		})
		if err != nil {
			t.Errorf("trust.Load(%s): %v", name, err)
		}
	}
	// No temporary files are left behind.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("left over file %s", e.Name())
		}
	}
}

func TestIssueServerSANs(t *testing.T) {
	dir := initCA(t, devpki.Options{})
	tests := []struct {
		name    string
		dns     []string
		ips     []net.IP
		wantDNS []string
		wantIPs []string
		wantErr bool
	}{
		{name: "localhost", wantDNS: []string{"localhost"}},
		{name: "127.0.0.1", wantIPs: []string{"127.0.0.1"}},
		{name: "my_server", dns: []string{"*.example.test"}, wantDNS: []string{"*.example.test"}},
		{name: "dup.test", dns: []string{"dup.test", "b.test"}, wantDNS: []string{"dup.test", "b.test"}},
		{name: "my_server2", wantErr: true},                         // no SAN at all
		{name: "bad-dns", dns: []string{"bad name"}, wantErr: true}, // invalid DNS name
		{name: "ip6", ips: []net.IP{net.ParseIP("::1")}, wantDNS: []string{"ip6"}, wantIPs: []string{"::1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := devpki.IssueServer(dir, tt.name, tt.dns, tt.ips, devpki.Options{})
			if tt.wantErr {
				if err == nil {
					t.Fatal("IssueServer succeeded, want error")
				}
				if _, serr := os.Stat(filepath.Join(dir, tt.name+".pem")); serr == nil {
					t.Error("a refused IssueServer wrote a file")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c := readCert(t, filepath.Join(dir, tt.name+".pem"))
			var ips []string
			for _, ip := range c.IPAddresses {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(c.DNSNames, tt.wantDNS) || !slices.Equal(ips, tt.wantIPs) {
				t.Errorf("SANs = %v %v, want %v %v", c.DNSNames, ips, tt.wantDNS, tt.wantIPs)
			}
		})
	}
}

func TestRefuseOverwrite(t *testing.T) {
	dir := initCA(t, devpki.Options{})
	if _, err := devpki.IssueClient(dir, "app1", devpki.Options{}); err != nil {
		t.Fatal(err)
	}
	snapshot := func() map[string][]byte {
		m := map[string][]byte{}
		for _, f := range []string{"ca.pem", "ca-key.pem", "app1.pem", "app1-key.pem"} {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			m[f] = b
		}
		return m
	}
	before := snapshot()
	// Only the key exists for "app2": still nothing may be written.
	if err := os.WriteFile(filepath.Join(dir, "app2-key.pem"), []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		run  func() error
		file string // the file the error must name
	}{
		{"Init", func() error { _, err := devpki.Init(dir, devpki.Options{}); return err }, "ca.pem"},
		{"IssueClient", func() error { _, err := devpki.IssueClient(dir, "app1", devpki.Options{}); return err }, "app1.pem"},
		{"IssueServer", func() error {
			_, err := devpki.IssueServer(dir, "app1", nil, nil, devpki.Options{})
			return err
		}, "app1.pem"},
		{"key only", func() error { _, err := devpki.IssueClient(dir, "app2", devpki.Options{}); return err }, "app2-key.pem"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run()
			if !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), tt.file) {
				t.Fatalf("error = %v, want fs.ErrExist naming %s", err, tt.file)
			}
		})
	}
	for f, b := range snapshot() {
		if !bytes.Equal(b, before[f]) {
			t.Errorf("%s changed without Force", f)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "app2.pem")); err == nil {
		t.Error("app2.pem written although app2-key.pem existed")
	}

	// With Force, files are replaced.
	if _, err := devpki.IssueClient(dir, "app1", devpki.Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := devpki.Init(dir, devpki.Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	after := snapshot()
	for _, f := range []string{"ca.pem", "ca-key.pem", "app1.pem", "app1-key.pem"} {
		if bytes.Equal(after[f], before[f]) {
			t.Errorf("%s unchanged with Force", f)
		}
	}
	checkMode(t, filepath.Join(dir, "app1-key.pem"), 0o600)
}

func TestRSA(t *testing.T) {
	dir := initCA(t, devpki.Options{RSABits: 2048})
	if _, ok := readCert(t, filepath.Join(dir, "ca.pem")).PublicKey.(*rsa.PublicKey); !ok {
		t.Error("CA key is not RSA")
	}
	if _, err := devpki.IssueServer(dir, "server.test", nil, nil, devpki.Options{RSABits: 2048}); err != nil {
		t.Fatal(err)
	}
	c := readCert(t, filepath.Join(dir, "server.test.pem"))
	pub, ok := c.PublicKey.(*rsa.PublicKey)
	if !ok || pub.N.BitLen() != 2048 {
		t.Fatalf("server key %T, want RSA 2048", c.PublicKey)
	}
	if c.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
		t.Errorf("RSA server KeyUsage = %v, want digitalSignature|keyEncipherment", c.KeyUsage)
	}
	if _, err := trust.Load(trust.Sources{
		CertFile: filepath.Join(dir, "server.test.pem"),
		KeyFile:  filepath.Join(dir, "server.test-key.pem"),
		CAFile:   filepath.Join(dir, "ca.pem"),
	}); err != nil {
		t.Errorf("trust.Load: %v", err)
	}
}

func TestInvalidInput(t *testing.T) {
	dir := initCA(t, devpki.Options{})
	tests := []struct {
		name string
		run  func() error
	}{
		{"RSA 1024", func() error { _, err := devpki.IssueClient(dir, "a", devpki.Options{RSABits: 1024}); return err }},
		{"RSA 1024 Init", func() error {
			_, err := devpki.Init(filepath.Join(t.TempDir(), "x"), devpki.Options{RSABits: 1024})
			return err
		}},
		{"negative days", func() error { _, err := devpki.IssueClient(dir, "a", devpki.Options{Days: -1}); return err }},
		{"CRL URL scheme", func() error {
			_, err := devpki.Init(filepath.Join(t.TempDir(), "x"), devpki.Options{CRLURL: "ldap://x/crl"})
			return err
		}},
	}
	for _, name := range []string{"", ".hidden", "../evil", "a/b", "a b", "ca", "app-key", strings.Repeat("a", 201)} {
		tests = append(tests, struct {
			name string
			run  func() error
		}{"name " + name, func() error { _, err := devpki.IssueClient(dir, name, devpki.Options{}); return err }})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.run(); err == nil || !strings.HasPrefix(err.Error(), "devpki: ") {
				t.Fatalf("error = %v, want a devpki error", err)
			}
		})
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("invalid calls wrote files: %d entries in the CA dir", len(entries))
	}
}

func TestNoCA(t *testing.T) {
	dir := t.TempDir()
	_, err := devpki.IssueClient(dir, "app1", devpki.Options{})
	want := "devpki: no CA in \"" + dir + "\": run `tunnel cert init " + dir + "` first"
	if !errors.Is(err, devpki.ErrNoCA) || err.Error() != want {
		t.Fatalf("error = %v, want %s", err, want)
	}
}

func TestCRLURL(t *testing.T) {
	const url = "http://crl.example.test/ca.crl"
	dir := filepath.Join(t.TempDir(), "pki")
	paths, err := devpki.Init(dir, devpki.Options{CRLURL: url})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(paths, filepath.Join(dir, "crl-url")) {
		t.Errorf("Init paths %v lack crl-url", paths)
	}
	checkMode(t, filepath.Join(dir, "crl-url"), 0o644)
	if _, err := devpki.IssueClient(dir, "app1", devpki.Options{}); err != nil {
		t.Fatal(err)
	}
	if got := readCert(t, filepath.Join(dir, "app1.pem")).CRLDistributionPoints; !slices.Equal(got, []string{url}) {
		t.Errorf("CRLDistributionPoints = %v, want [%s]", got, url)
	}
	// A forced re-init without a URL drops the old CA's URL.
	if _, err := devpki.Init(dir, devpki.Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := devpki.IssueClient(dir, "app2", devpki.Options{}); err != nil {
		t.Fatal(err)
	}
	if got := readCert(t, filepath.Join(dir, "app2.pem")).CRLDistributionPoints; len(got) != 0 {
		t.Errorf("CRLDistributionPoints after re-init = %v, want none", got)
	}
}

func TestNewLeafInMemory(t *testing.T) {
	ca, err := devpki.NewCA("test CA", devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if ca.Cert.Subject.CommonName != "test CA" {
		t.Errorf("CA CN = %q", ca.Cert.Subject.CommonName)
	}
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "bare"}}
	leaf, err := devpki.NewLeaf(ca, tmpl, devpki.Options{CRLURL: "https://crl.test/x.crl"})
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.SerialNumber != nil || !tmpl.NotAfter.IsZero() {
		t.Error("NewLeaf modified the template")
	}
	c := leaf.Cert
	if c.KeyUsage != 0 || len(c.ExtKeyUsage) != 0 {
		t.Errorf("NewLeaf added usages: %v %v", c.KeyUsage, c.ExtKeyUsage)
	}
	if err := c.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("leaf not signed by CA: %v", err)
	}
	if !slices.Equal(c.CRLDistributionPoints, []string{"https://crl.test/x.crl"}) {
		t.Errorf("CRLDistributionPoints = %v", c.CRLDistributionPoints)
	}
	self, err := devpki.NewLeaf(nil, &x509.Certificate{Subject: pkix.Name{CommonName: "self"}}, devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := self.Cert.CheckSignature(self.Cert.SignatureAlgorithm, self.Cert.RawTBSCertificate, self.Cert.Signature); err != nil {
		t.Errorf("nil CA: not self-signed: %v", err)
	}
	if b, _ := pem.Decode(leaf.KeyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Error("KeyPEM is not PKCS#8 PEM")
	}
}
