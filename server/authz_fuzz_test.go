package server

import (
	"testing"

	"github.com/tunnel-dev/tunnel/trust"
)

// FuzzIdentityRule: no rule text panics the parser or the matcher, and a
// rule that parses prints back to text that parses to the same rule.
func FuzzIdentityRule(f *testing.F) {
	for _, s := range []string{"cn:app1", "ou:payments", "dns:*.batch.corp", "uri:spiffe://corp/payments/*",
		"ip:10.0.0.0/8", "sha256:ab", "dns:*", "uri:*", "bogus:x", "cn:", ":"} {
		f.Add(s, "app1.batch.corp", "spiffe://corp/payments/api")
	}
	f.Fuzz(func(t *testing.T, rule, dns, uri string) {
		r, err := ParseIdentityRule(rule)
		if err != nil {
			return
		}
		again, err := ParseIdentityRule(r.String())
		if err != nil || again.String() != r.String() {
			t.Fatalf("%q parses, prints as %q, which gives %q, %v", rule, r.String(), again.String(), err)
		}
		r.Matches(trust.Identity{CommonName: dns, DNSNames: []string{dns}, URIs: []string{uri}})
	})
}
