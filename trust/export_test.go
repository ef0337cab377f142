package trust

import "net/netip"

// SetTestAllowPrefixes lets fetchers created until restore is called dial
// prefixes the SSRF guard refuses, as the tunnel_testhooks build does for the
// end-to-end tests.
func SetTestAllowPrefixes(p ...netip.Prefix) (restore func()) {
	old := testAllowPrefixes
	testAllowPrefixes = p
	return func() { testAllowPrefixes = old }
}
