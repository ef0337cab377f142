package server

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/tunnel-dev/tunnel/trust"
)

// Access.Decide runs once per stream. The worst case is a peer that matches
// only the last rule of a long list.
func BenchmarkAccessDecide(b *testing.B) {
	id := trust.Identity{
		CommonName: "app1", OrgUnits: []string{"payments"},
		DNSNames: []string{"app1.corp", "app1.payments.corp"}, URIs: []string{"spiffe://corp/payments/api"},
		IPs: []string{"10.1.2.3"}, Fingerprint: "ab",
	}
	peer := Peer{Addr: netip.MustParseAddr("10.1.2.3"), Identity: id}
	for _, n := range []int{1, 10, 100} {
		for _, last := range []string{"cn:app1", "dns:*.payments.corp", "uri:spiffe://corp/payments/*", "ip:10.1.0.0/16"} {
			b.Run(fmt.Sprintf("rules=%d/last=%s", n, last), func(b *testing.B) {
				a := &Access{Name: "bench"}
				for i := range n - 1 {
					r, err := ParseIdentityRule(fmt.Sprintf("dns:host%d.other.corp", i))
					if err != nil {
						b.Fatal(err)
					}
					a.Identities = append(a.Identities, r)
				}
				r, err := ParseIdentityRule(last)
				if err != nil {
					b.Fatal(err)
				}
				a.Identities = append(a.Identities, r)
				b.ReportAllocs()
				for b.Loop() {
					if reason := a.Decide(peer); reason != "" {
						b.Fatalf("Decide = %q, want admitted", reason)
					}
				}
			})
		}
	}
}
