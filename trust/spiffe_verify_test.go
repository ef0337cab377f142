package trust_test

import (
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tunnel-dev/tunnel/trust"
)

// spiffeMaterialOf builds SPIFFE material by hand: leaf's chain and key, and
// one bundle per trust domain.
func spiffeMaterialOf(t *testing.T, leaf *testCert, bundles map[string]*testCert) *trust.Material {
	t.Helper()
	var cas []*testCert
	set := x509bundle.NewSet()
	for td, ca := range bundles {
		set.Add(x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString(td), []*x509.Certificate{ca.cert}))
		cas = append(cas, ca)
	}
	m := material(t, leaf, cas...)
	id, _ := spiffeid.FromString(leaf.cert.URIs[0].String()) // the zero ID for a leaf that is no SVID
	m.SPIFFE = &trust.SPIFFEMaterial{ID: id, Bundles: set}
	return m
}

func withURI(u string) func(*x509.Certificate) {
	return func(c *x509.Certificate) {
		p, _ := url.Parse(u)
		c.URIs = []*url.URL{p}
		c.DNSNames = nil
	}
}

// Each trust domain's CA vouches for its own trust domain only: with both
// bundles held, b.test's CA cannot issue an SVID for a.test. crypto/tls
// alone would accept it (both CAs are roots of the pool).
func TestSPIFFEBundlePerTrustDomain(t *testing.T) {
	caA, caB := newCA(t, "a.test CA"), newCA(t, "b.test CA")
	srvLeaf := newLeaf(t, caA, "server", x509.ExtKeyUsageServerAuth, withURI("spiffe://a.test/server"))
	m := spiffeMaterialOf(t, srvLeaf, map[string]*testCert{"a.test": caA, "b.test": caB})
	srv := trust.ServerConfig(trust.NewStore(m), nil)

	tests := []struct {
		name string
		leaf *testCert
		want string
	}{
		{"b.test client from b.test's CA", newLeaf(t, caB, "c", x509.ExtKeyUsageClientAuth, withURI("spiffe://b.test/client")), ""},
		{"a.test ID from b.test's CA", newLeaf(t, caB, "c", x509.ExtKeyUsageClientAuth, withURI("spiffe://a.test/client")), trust.ReasonBadSVID},
		{"not a SPIFFE ID", newLeaf(t, caA, "c", x509.ExtKeyUsageClientAuth, withURI("https://a.test/client")), trust.ReasonBadSVID},
		{"unknown trust domain", newLeaf(t, caA, "c", x509.ExtKeyUsageClientAuth, withURI("spiffe://c.test/client")), trust.ReasonBadSVID},
	}
	for _, tt := range tests {
		cm := spiffeMaterialOf(t, tt.leaf, map[string]*testCert{"a.test": caA})
		cli := trust.ClientConfig(trust.NewStore(cm), "", nil, trust.WithServerSPIFFEID(spiffeid.RequireFromString("spiffe://a.test/server")))
		s, _ := handshake(t, srv, cli)
		if got := trust.FailureReason(s.err); got != tt.want {
			t.Errorf("%s: server says %q (%v), want %q", tt.name, got, s.err, tt.want)
		}
	}
}

// --server-spiffe-id with certificates from files: the server's only URI
// SAN must be the ID; its DNS names and the server name play no part.
func TestServerSPIFFEIDFileMaterial(t *testing.T) {
	p := newPKI(t)
	client := newLeaf(t, p.clientCA, "app", x509.ExtKeyUsageClientAuth, nil)
	idLeaf := newLeaf(t, p.serverCA, "server.test", x509.ExtKeyUsageServerAuth, withURI("spiffe://corp/db"))
	withID := trust.ServerConfig(trust.NewStore(material(t, idLeaf, p.clientCA)), nil)
	dnsOnly := trust.ServerConfig(trust.NewStore(material(t, p.server, p.clientCA)), nil)
	cm := trust.NewStore(material(t, client, p.serverCA))
	tests := []struct {
		name string
		srv  *tls.Config
		id   string
		want string
	}{
		{"its ID", withID, "spiffe://corp/db", ""},
		{"another ID", withID, "spiffe://corp/cache", trust.ReasonSPIFFEIDMismatch},
		{"no URI SAN", dnsOnly, "spiffe://corp/db", trust.ReasonSPIFFEIDMismatch},
	}
	for _, tt := range tests {
		cli := trust.ClientConfig(cm, "wrong.name.test", nil, trust.WithServerSPIFFEID(spiffeid.RequireFromString(tt.id)))
		_, c := handshake(t, tt.srv, cli)
		if got := trust.FailureReason(c.err); got != tt.want {
			t.Errorf("%s: client says %q (%v), want %q", tt.name, got, c.err, tt.want)
		}
	}
	// Without the option the server name is checked as always.
	_, c := handshake(t, withID, trust.ClientConfig(cm, "wrong.name.test", nil))
	if got := trust.FailureReason(c.err); got != "name_mismatch" {
		t.Errorf("no SPIFFE ID option, wrong server name: %q", got)
	}
}
