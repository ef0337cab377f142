package devpki_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tunnel-dev/tunnel/internal/devpki"
	"github.com/tunnel-dev/tunnel/trust"
)

func uriStrings(us []*url.URL) []string {
	var out []string
	for _, u := range us {
		out = append(out, u.String())
	}
	return out
}

// Issued certificates carry the URI SANs and OUs asked for, exactly, and
// the identity the server authorizes by sees them.
func TestIssueURIsAndOrgUnits(t *testing.T) {
	dir := initCA(t, devpki.Options{})
	uris := []string{"spiffe://corp.example/payments/api", "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66", "https://id.example/a,b"}
	ous := []string{"payments", "EU, ops"}
	opt := devpki.Options{URIs: uris, OrgUnits: ous}
	if _, err := devpki.IssueClient(dir, "api", opt); err != nil {
		t.Fatal(err)
	}
	if _, err := devpki.IssueServer(dir, "srv.example", nil, []net.IP{net.IPv4(127, 0, 0, 1)}, devpki.Options{URIs: uris[:1]}); err != nil {
		t.Fatal(err)
	}
	c := readCert(t, filepath.Join(dir, "api.pem"))
	if got := uriStrings(c.URIs); !slices.Equal(got, uris) {
		t.Errorf("client URI SANs = %q, want %q", got, uris)
	}
	if got := c.Subject.OrganizationalUnit; !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(ous))) {
		t.Errorf("client OUs = %q, want %q", got, ous)
	}
	id := trust.IdentityOf(c)
	if !slices.Equal(id.URIs, uris) || !slices.Contains(id.OrgUnits, "payments") {
		t.Errorf("identity = URIs %q, OUs %q; want %q and %q", id.URIs, id.OrgUnits, uris, ous)
	}
	s := readCert(t, filepath.Join(dir, "srv.example.pem"))
	if got := uriStrings(s.URIs); !slices.Equal(got, uris[:1]) || !slices.Equal(s.DNSNames, []string{"srv.example"}) {
		t.Errorf("server SANs = DNS %q, URI %q; want DNS srv.example and URI %q", s.DNSNames, got, uris[0])
	}
}

// NewLeaf adds the options' names to the template's and leaves the
// template's slices alone.
func TestNewLeafAddsNames(t *testing.T) {
	ca, err := devpki.NewCA("", devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	own, _ := url.Parse("spiffe://corp/own")
	tmplURIs := make([]*url.URL, 1, 4) // spare capacity: an append would write into it
	tmplURIs[0] = own
	tmplOUs := make([]string, 1, 4)
	tmplOUs[0] = "own"
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "x", OrganizationalUnit: tmplOUs}, URIs: tmplURIs}
	leaf, err := devpki.NewLeaf(ca, tmpl, devpki.Options{URIs: []string{"spiffe://corp/added"}, OrgUnits: []string{"added"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := uriStrings(leaf.Cert.URIs); !slices.Equal(got, []string{"spiffe://corp/own", "spiffe://corp/added"}) {
		t.Errorf("URIs = %q", got)
	}
	if got := slices.Sorted(slices.Values(leaf.Cert.Subject.OrganizationalUnit)); !slices.Equal(got, []string{"added", "own"}) {
		t.Errorf("OUs = %q", got)
	}
	if len(tmpl.URIs) != 1 || tmplURIs[:2][1] != nil || len(tmpl.Subject.OrganizationalUnit) != 1 || tmplOUs[:2][1] != "" {
		t.Error("NewLeaf modified the template")
	}
}

func TestCheckURI(t *testing.T) {
	good := []string{
		"spiffe://corp.example/payments/api",
		"spiffe://corp.example",
		"spiffe://a_b-c.9/A.b-C_d/e",
		"urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
		"https://id.example/path?x=1",
	}
	bad := []string{
		"",
		"payments/api",                     // relative
		"//corp/payments",                  // no scheme
		"spiffe://Corp.example/x",          // uppercase trust domain
		"SPIFFE://corp/x",                  // uppercase scheme
		"spiffe://corp:8443/x",             // port
		"spiffe://user@corp/x",             // user info
		"spiffe:///x",                      // no trust domain
		"spiffe://corp/a//b",               // empty segment
		"spiffe://corp/a/",                 // trailing slash
		"spiffe://corp/a/../b",             // dot segment
		"spiffe://corp/a?x=1",              // query
		"spiffe://corp/a#f",                // fragment
		"spiffe://corp/a%20b",              // percent-encoding
		"spiffe:corp/a",                    // opaque
		"http://a b/",                      // url.Parse refuses
		"urn:" + strings.Repeat("a", 2048), // too long
	}
	for _, s := range good {
		if err := devpki.CheckURI(s); err != nil {
			t.Errorf("CheckURI(%q) = %v, want nil", s, err)
		}
	}
	for _, s := range bad {
		if err := devpki.CheckURI(s); err == nil || !strings.HasPrefix(err.Error(), "devpki: ") {
			t.Errorf("CheckURI(%q) = %v, want a devpki error", s, err)
		}
	}
}

func TestCheckOrgUnit(t *testing.T) {
	for _, s := range []string{"payments", "EU, ops", "Zahlungsverkehr Ü", strings.Repeat("a", 64)} {
		if err := devpki.CheckOrgUnit(s); err != nil {
			t.Errorf("CheckOrgUnit(%q) = %v, want nil", s, err)
		}
	}
	for _, s := range []string{"", "  ", "a\x00b", "a\nb", "\xff", strings.Repeat("a", 65)} {
		if err := devpki.CheckOrgUnit(s); err == nil || !strings.HasPrefix(err.Error(), "devpki: ") {
			t.Errorf("CheckOrgUnit(%q) = %v, want a devpki error", s, err)
		}
	}
}

// A bad URI or OU refuses the whole issue: no file is written.
func TestIssueBadNamesWritesNothing(t *testing.T) {
	dir := initCA(t, devpki.Options{})
	for _, opt := range []devpki.Options{{URIs: []string{"payments/api"}}, {OrgUnits: []string{""}}} {
		if _, err := devpki.IssueClient(dir, "x", opt); err == nil {
			t.Errorf("IssueClient with %+v succeeded", opt)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("refused issues wrote files: %d entries in the CA dir", len(entries))
	}
}
