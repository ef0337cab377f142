package trust_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/url"
	"testing"

	"github.com/tunnel-dev/tunnel/internal/devpki"
	"github.com/tunnel-dev/tunnel/trust"
)

// IdentityOf runs once per handshake: names, SANs and the SHA-256
// fingerprint of the leaf.
func BenchmarkIdentityOf(b *testing.B) {
	ca, err := devpki.NewCA("bench CA", devpki.Options{})
	if err != nil {
		b.Fatal(err)
	}
	u, _ := url.Parse("spiffe://corp/payments/api")
	leaf, err := devpki.NewLeaf(ca, &x509.Certificate{
		Subject:  pkix.Name{CommonName: "app1", OrganizationalUnit: []string{"payments"}},
		DNSNames: []string{"app1.corp", "app1.payments.corp"}, URIs: []*url.URL{u},
		IPAddresses: []net.IP{net.IPv4(10, 1, 2, 3)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, devpki.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if id := trust.IdentityOf(leaf.Cert); id.CommonName != "app1" {
			b.Fatal(id)
		}
	}
}
