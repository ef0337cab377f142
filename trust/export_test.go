package trust

import (
	"context"
	"net"
	"net/netip"
)

// SetTestAllowPrefixes lets fetchers created until restore is called dial
// prefixes the SSRF guard refuses, as the tunnel_testhooks build does for the
// end-to-end tests.
func SetTestAllowPrefixes(p ...netip.Prefix) (restore func()) {
	old := testAllowPrefixes
	testAllowPrefixes = p
	return func() { testAllowPrefixes = old }
}

// NewCRLFetcherDialer returns a fetcher that connects with dial instead of
// a guarded net.Dialer, so a test sees what would be dialled.
func NewCRLFetcherDialer(opts FetchOptions, dial func(ctx context.Context, network, address string) (net.Conn, error)) *CRLFetcher {
	return newCRLFetcher(opts, dial)
}
