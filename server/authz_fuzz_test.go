package server

import (
	"strings"
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

// FuzzWildcardMatch: whatever the pattern and the SAN, a match keeps the
// grammar's promises. A dns match is a valid host name with as many labels
// as the pattern; a uri match has as many segments, and no segment that a
// "*" stood for is empty, a dot segment, or holds "?", "#", or a
// percent-encoded "/", "." or "%".
func FuzzWildcardMatch(f *testing.F) {
	for _, s := range [][2]string{
		{"dns:*.batch.corp", "a.batch.corp"}, {"dns:*.batch.corp", "a\nb.batch.corp"}, {"dns:*.*", "a.b"},
		{"uri:spiffe://corp/payments/*", "spiffe://corp/payments/%2e%2e"}, {"uri:spiffe://corp/payments/*", "spiffe://corp/payments/a%2Fb"},
		{"uri:spiffe://corp/svc-*", "spiffe://corp/svc-a"}, {"uri:x://h/*/*", "x://h/./.."}, {"uri:x://h/.*", "x://h/.."},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, rule, san string) {
		r, err := ParseIdentityRule(rule)
		if err != nil {
			return
		}
		switch r.kind {
		case KindDNS:
			if !r.Matches(trust.Identity{DNSNames: []string{san}}) {
				return
			}
			name := strings.TrimSuffix(san, ".")
			labels := strings.Split(name, ".")
			if len(name) > maxHostName || len(labels) != strings.Count(r.pattern, ".")+1 {
				t.Fatalf("%s matched %q: wrong length or label count", r, san)
			}
			for _, l := range labels {
				if !hostLabel(l) {
					t.Fatalf("%s matched %q, whose label %q is not a host name label", r, san, l)
				}
			}
		case KindURI:
			if !r.Matches(trust.Identity{URIs: []string{san}}) {
				return
			}
			ps, us := strings.Split(r.pattern, "/"), strings.Split(san, "/")
			if len(ps) != len(us) {
				t.Fatalf("%s matched %q across segments", r, san)
			}
			for i, p := range ps {
				if !strings.HasSuffix(p, "*") {
					if p != us[i] {
						t.Fatalf("%s matched %q: segment %q is not %q", r, san, us[i], p)
					}
					continue
				}
				seg := us[i]
				if len(seg) < len(p) {
					t.Fatalf("%s matched %q with an empty wildcard in segment %q", r, san, seg)
				}
				low := strings.ToLower(seg[len(p)-1:])
				if seg == "." || seg == ".." || strings.ContainsAny(seg, "?#") ||
					strings.Contains(low, "%2f") || strings.Contains(low, "%2e") || strings.Contains(low, "%25") {
					t.Fatalf("%s matched %q with wildcard segment %q", r, san, seg)
				}
			}
		}
	})
}
