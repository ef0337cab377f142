package trust_test

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"math/big"
	"net"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/trust"
)

func TestIdentityOf(t *testing.T) {
	ca := newCA(t, "CA")
	spiffe, _ := url.Parse("spiffe://example.org/app1")
	leaf := newLeaf(t, ca, "app1", x509.ExtKeyUsageClientAuth, func(c *x509.Certificate) {
		c.SerialNumber = big.NewInt(0xABCDEF)
		c.Subject = pkix.Name{CommonName: "app1", OrganizationalUnit: []string{"ops", "db"}}
		c.DNSNames = []string{"a.test", "b.test"}
		c.URIs = []*url.URL{spiffe}
		c.IPAddresses = []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	})
	sum := sha256.Sum256(leaf.cert.Raw)
	fp := hex.EncodeToString(sum[:])
	want := trust.Identity{
		CommonName:  "app1",
		CommonNames: []string{"app1"},
		OrgUnits:    []string{"db", "ops"}, // DER sorts a SET OF
		DNSNames:    []string{"a.test", "b.test"},
		URIs:        []string{"spiffe://example.org/app1"},
		IPs:         []string{"127.0.0.1", "::1"},
		Serial:      "abcdef",
		Fingerprint: fp,
		SPIFFEID:    "spiffe://example.org/app1", // its only URI SAN is a SPIFFE ID
	}
	id := trust.IdentityOf(leaf.cert)
	if !reflect.DeepEqual(id, want) {
		t.Fatalf("IdentityOf = %#v\nwant %#v", id, want)
	}
	wantFields := map[string]any{
		audit.IdentityCN:          "app1",
		audit.IdentitySANs:        "dns:a.test,dns:b.test,uri:spiffe://example.org/app1,ip:127.0.0.1,ip:::1",
		audit.IdentitySerial:      "abcdef",
		audit.IdentityFingerprint: fp,
	}
	if got := map[string]any(id.Fields()); !reflect.DeepEqual(got, wantFields) {
		t.Errorf("Fields = %v, want %v", got, wantFields)
	}
	if got, want := id.String(), `cn="app1" serial=abcdef sha256=`+fp[:16]; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
}

func TestIdentityFieldsCapped(t *testing.T) {
	long := strings.Repeat("é", 300) // 600 bytes
	var dns []string
	for range 40 {
		dns = append(dns, "host-with-a-long-name.example.test")
	}
	id := trust.Identity{CommonName: long, DNSNames: dns}
	f := id.Fields()
	for _, k := range []string{audit.IdentityCN, audit.IdentitySANs} {
		v := f[k].(string)
		if len(v) > 256 || !strings.HasSuffix(v, "...") {
			t.Errorf("field %s has %d bytes (%q...), want at most 256 ending in ...", k, len(v), v[:20])
		}
		if !utf8Valid(v) {
			t.Errorf("field %s was cut inside a rune", k)
		}
	}
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

func TestPeerIdentity(t *testing.T) {
	ca := newCA(t, "CA")
	verified := newLeaf(t, ca, "verified", x509.ExtKeyUsageClientAuth, nil)
	presented := newLeaf(t, ca, "presented", x509.ExtKeyUsageClientAuth, nil)
	tests := []struct {
		name   string
		cs     tls.ConnectionState
		wantCN string
		wantOK bool
	}{
		{name: "none"},
		{name: "presented only", cs: tls.ConnectionState{PeerCertificates: []*x509.Certificate{presented.cert}},
			wantCN: "presented", wantOK: true},
		{name: "verified first", cs: tls.ConnectionState{
			PeerCertificates: []*x509.Certificate{presented.cert},
			VerifiedChains:   [][]*x509.Certificate{{verified.cert, ca.cert}},
		}, wantCN: "verified", wantOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, ok := trust.PeerIdentity(tt.cs)
			if ok != tt.wantOK || id.CommonName != tt.wantCN {
				t.Errorf("PeerIdentity = %q, %v; want %q, %v", id.CommonName, ok, tt.wantCN, tt.wantOK)
			}
		})
	}
}

// TestIdentityCommonNames: every CN of the subject is kept, in order;
// CommonName is the last, as crypto/x509 picks it.
func TestIdentityCommonNames(t *testing.T) {
	ca := newCA(t, "CA")
	leaf := newLeaf(t, ca, "x", x509.ExtKeyUsageClientAuth, func(c *x509.Certificate) {
		c.Subject = pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
			{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "admin"},
			{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "app1"},
		}}
	})
	id := trust.IdentityOf(leaf.cert)
	if !reflect.DeepEqual(id.CommonNames, []string{"admin", "app1"}) || id.CommonName != "app1" {
		t.Errorf("CommonNames = %q, CommonName = %q; want [admin app1] and app1", id.CommonNames, id.CommonName)
	}
}

// TestPeerIdentityNameConstraints: under a CA with name constraints, the
// identity says whether the leaf has a SAN those constraints governed.
func TestPeerIdentityNameConstraints(t *testing.T) {
	root := newCA(t, "Root")
	constrained := sign(t, &x509.Certificate{Subject: pkix.Name{CommonName: "Constrained"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, PermittedDNSDomains: []string{"corp"}}, newECKey(t), root)
	cnOnly := newLeaf(t, constrained, "admin", x509.ExtKeyUsageClientAuth, func(c *x509.Certificate) { c.DNSNames = nil })
	withSAN := newLeaf(t, constrained, "app1.corp", x509.ExtKeyUsageClientAuth, nil)
	uriOnly := newLeaf(t, constrained, "admin", x509.ExtKeyUsageClientAuth, func(c *x509.Certificate) {
		c.DNSNames = nil
		u, _ := url.Parse("spiffe://corp/admin")
		c.URIs = []*url.URL{u}
	})
	free := newLeaf(t, root, "admin", x509.ExtKeyUsageClientAuth, func(c *x509.Certificate) { c.DNSNames = nil })
	for _, tt := range []struct {
		name                  string
		chain                 []*x509.Certificate
		constrained, backedBy bool
	}{
		{"CN only under constraints", []*x509.Certificate{cnOnly.cert, constrained.cert, root.cert}, true, false},
		{"DNS SAN under DNS constraints", []*x509.Certificate{withSAN.cert, constrained.cert, root.cert}, true, true},
		{"URI SAN under DNS constraints", []*x509.Certificate{uriOnly.cert, constrained.cert, root.cert}, true, false},
		{"no constraints", []*x509.Certificate{free.cert, root.cert}, false, false},
	} {
		id, _ := trust.PeerIdentity(tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{tt.chain}})
		if id.NameConstrained != tt.constrained || id.ConstrainedSAN != tt.backedBy {
			t.Errorf("%s: NameConstrained %v, ConstrainedSAN %v; want %v, %v", tt.name, id.NameConstrained, id.ConstrainedSAN, tt.constrained, tt.backedBy)
		}
	}
}
