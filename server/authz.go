package server

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/trust"
)

// Reasons a route refuses a peer: the reason field of a forbidden stream's
// stream_refused line and of a session_revoked line after a reload.
const (
	ReasonIdentityNotAllowed = "identity_not_allowed"
	ReasonIPNotAllowed       = netfilter.ReasonIPNotAllowed
	// ReasonMultipleCNs: a cn: rule names one of the leaf's common names,
	// but the subject has several, so which one the rule means is not
	// clear; no other rule matched.
	ReasonMultipleCNs = "multiple_common_names"
	// ReasonCNUnconstrained: a cn: rule names the leaf's common name, but a
	// CA of its chain has name constraints and the leaf has no SAN of a
	// kind they govern, so nothing the constraints checked backs the name;
	// no other rule matched.
	ReasonCNUnconstrained = "common_name_unconstrained"
)

// Access is the authorization of one route: which verified identities and
// which client addresses may open streams to it. A nil *Access, or one with
// no Identities and a nil Allow, admits every client the listener admitted.
// An Access is immutable once a Server holds it.
type Access struct {
	// Name names the rule set in audit lines (the rule_set field), e.g.
	// "routes.db" for the rules of route db in the config file.
	Name string

	// Identities admits a peer whose verified leaf matches at least one
	// rule; empty admits every verified identity.
	Identities []IdentityRule

	// Allow narrows the listener's allowlist for this route: the peer's
	// address must be in both. Nil means no narrowing.
	Allow *netfilter.Allowlist
}

// Decide returns "" if a admits p, or the reason it does not:
// ReasonIPNotAllowed, ReasonIdentityNotAllowed, or, when the only rule that
// named the peer was a cn: rule that may not decide, ReasonMultipleCNs or
// ReasonCNUnconstrained. Safe on a nil *Access.
func (a *Access) Decide(p Peer) string {
	if a == nil {
		return ""
	}
	if a.Allow != nil && !a.Allow.Contains(p.Addr) {
		return ReasonIPNotAllowed
	}
	if len(a.Identities) == 0 {
		return ""
	}
	reason := ReasonIdentityNotAllowed
	for _, r := range a.Identities {
		ok, why := r.match(p.Identity)
		if ok {
			return ""
		}
		if why != "" {
			reason = why
		}
	}
	return reason
}

// String describes the rules for humans (`tunnel check`): "identities
// cn:app1, dns:*.corp; allow 10.1.0.0/16", or "every verified client".
func (a *Access) String() string {
	if a == nil || (len(a.Identities) == 0 && a.Allow == nil) {
		return "every verified client"
	}
	var parts []string
	if len(a.Identities) > 0 {
		ids := make([]string, len(a.Identities))
		for i, r := range a.Identities {
			ids[i] = r.String()
		}
		parts = append(parts, "identities "+strings.Join(ids, ", "))
	}
	if a.Allow != nil {
		parts = append(parts, "allow "+a.Allow.String())
	}
	return strings.Join(parts, "; ")
}

// Kinds of identity rules: the prefix before the colon.
const (
	KindCN     = "cn"     // subject common name, exact
	KindOU     = "ou"     // one of the subject's organizational units, exact
	KindDNS    = "dns"    // a DNS SAN that is a valid host name; "*" stands for exactly one label
	KindURI    = "uri"    // a URI SAN; "*" ends a path segment and matches within it
	KindIP     = "ip"     // an IP SAN, equal to an address or inside a CIDR
	KindSHA256 = "sha256" // the SHA-256 fingerprint of the leaf's DER, hex
	// KindSPIFFETD: the trust domain of the leaf's SPIFFE ID (its only URI
	// SAN, a well-formed SPIFFE ID), exact.
	KindSPIFFETD = "spiffe-td"
)

// IdentityRule matches one field of a verified leaf. The zero value is
// invalid; build one with ParseIdentityRule. It is a comparable value.
type IdentityRule struct {
	kind    string
	pattern string       // normalised: DNS lowercased, fingerprint lowercase hex
	prefix  netip.Prefix // KindIP only
}

// ParseIdentityRule parses "KIND:PATTERN" where KIND is cn, ou, dns, uri, ip,
// sha256 or spiffe-td. The wildcard grammar (docs/CONFIG.md has it as a table of
// examples, which the tests run): a dns pattern is a host name whose labels
// are RFC 1123 labels or "*", and "*" matches exactly one label of a SAN
// that is itself a valid host name ("*.batch.corp" matches "a.batch.corp",
// not "a.b.batch.corp", "batch.corp" or "a b.batch.corp"). In a uri
// pattern "*" may only end a path segment, never in the scheme or
// authority, and matches one or more characters of that segment: URI path
// characters only, never "/", "?" or "#", never making the segment "." or
// "..", and never a percent-encoded "/", "." or "%" ("spiffe://corp/payments/*"
// matches ".../payments/api", not ".../payments/api/v2", ".../payments/..",
// ".../payments/%2e%2e" nor ".../payments/a%2Fadmin"). A uri pattern has no
// "." or ".." segment itself. ip takes an address or a CIDR. sha256 takes 64
// hex digits, colons allowed. spiffe-td takes a SPIFFE trust domain
// ("example.org", or "spiffe://example.org") and matches a leaf whose only
// URI SAN is a SPIFFE ID in it. cn and ou match exactly and take no wildcard;
// a cn rule never matches a leaf with several common names, nor, under a
// name-constrained CA, a leaf without a SAN the constraints govern.
func ParseIdentityRule(s string) (IdentityRule, error) {
	kind, pat, ok := strings.Cut(s, ":")
	kind = strings.ToLower(strings.TrimSpace(kind))
	pat = strings.TrimSpace(pat)
	fail := func(format string, args ...any) (IdentityRule, error) {
		return IdentityRule{}, fmt.Errorf("server: identity rule %q: %s", s, fmt.Sprintf(format, args...))
	}
	if !ok {
		return fail("want KIND:PATTERN with KIND one of cn, ou, dns, uri, ip, sha256, spiffe-td")
	}
	if pat == "" {
		return fail("empty pattern")
	}
	r := IdentityRule{kind: kind, pattern: pat}
	switch kind {
	case KindCN, KindOU:
		if strings.Contains(pat, "*") {
			return fail("%s: takes no wildcard (use dns: or uri: for wildcards)", kind)
		}
	case KindDNS:
		r.pattern = strings.ToLower(strings.TrimSuffix(pat, "."))
		if err := checkDNSPattern(r.pattern); err != nil {
			return fail("%v", err)
		}
	case KindURI:
		if err := checkURIPattern(pat); err != nil {
			return fail("%v", err)
		}
	case KindIP:
		if p, err := netip.ParsePrefix(pat); err == nil {
			r.prefix = p.Masked()
		} else if a, err := netip.ParseAddr(pat); err == nil && a.Zone() == "" {
			a = a.Unmap()
			r.prefix = netip.PrefixFrom(a, a.BitLen())
		} else {
			return fail("%q is not an IP address or CIDR", pat)
		}
		r.pattern = r.prefix.String()
	case KindSPIFFETD:
		td, err := trust.CheckTrustDomain(pat)
		if err != nil {
			return fail("%v", errors.Unwrap(err))
		}
		r.pattern = td
	case KindSHA256:
		h := strings.ToLower(strings.ReplaceAll(pat, ":", ""))
		if b, err := hex.DecodeString(h); err != nil || len(b) != 32 {
			return fail("want 64 hex digits (colons allowed)")
		}
		r.pattern = h
	default:
		return fail("unknown kind %q: want cn, ou, dns, uri, ip, sha256 or spiffe-td", kind)
	}
	return r, nil
}

// String returns the rule as ParseIdentityRule reads it.
func (r IdentityRule) String() string { return r.kind + ":" + r.pattern }

// Matches reports whether the identity of a verified leaf satisfies r.
func (r IdentityRule) Matches(id trust.Identity) bool {
	ok, _ := r.match(id)
	return ok
}

// match is Matches with, for a cn rule that names the leaf but may not
// decide, the reason (ReasonMultipleCNs, ReasonCNUnconstrained).
func (r IdentityRule) match(id trust.Identity) (bool, string) {
	switch r.kind {
	case KindCN:
		if id.CommonName != r.pattern && !slices.Contains(id.CommonNames, r.pattern) {
			return false, ""
		}
		if len(id.CommonNames) > 1 {
			return false, ReasonMultipleCNs // crypto/x509 keeps the last; the CA may have meant another
		}
		if id.NameConstrained && !id.ConstrainedSAN {
			return false, ReasonCNUnconstrained // name constraints never look at the CN
		}
		return true, ""
	case KindOU:
		return anyOf(id.OrgUnits, func(v string) bool { return v == r.pattern }), ""
	case KindDNS:
		return anyOf(id.DNSNames, func(v string) bool { return matchDNS(r.pattern, v) }), ""
	case KindURI:
		return anyOf(id.URIs, func(v string) bool { return matchURI(r.pattern, v) }), ""
	case KindIP:
		return anyOf(id.IPs, func(v string) bool {
			a, err := netip.ParseAddr(v)
			return err == nil && r.prefix.Contains(a.Unmap())
		}), ""
	case KindSHA256:
		return id.Fingerprint == r.pattern, ""
	case KindSPIFFETD:
		return id.SPIFFEID != "" && id.SPIFFETrustDomain() == r.pattern, ""
	}
	return false, "" // the zero rule matches nothing
}

func anyOf(vals []string, f func(string) bool) bool {
	for _, v := range vals {
		if f(v) {
			return true
		}
	}
	return false
}

// routeUse counts a session's open streams per route, so that a reload can
// tell which sessions use a route whose rules changed.
type routeUse struct {
	mu   sync.Mutex
	open map[string]int // route name -> open streams; made lazily; guarded by mu
}

// enter counts a stream on route until the returned func is called.
func (u *routeUse) enter(route string) (leave func()) {
	u.mu.Lock()
	if u.open == nil {
		u.open = make(map[string]int)
	}
	u.open[route]++
	u.mu.Unlock()
	return func() {
		u.mu.Lock()
		if u.open[route]--; u.open[route] <= 0 {
			delete(u.open, route)
		}
		u.mu.Unlock()
	}
}

// routes returns the names of the routes with open streams.
func (u *routeUse) routes() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make([]string, 0, len(u.open))
	for r := range u.open {
		out = append(out, r)
	}
	return out
}
