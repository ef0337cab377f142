package trust

import (
	"context"
	"crypto/x509"
	"net"
	"net/netip"
	"time"
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

// VerifyOCSP is verifyOCSP with the source "test", for checking real
// responses at chosen times.
func VerifyOCSP(der []byte, cert, issuer *x509.Certificate, nonce []byte, now time.Time) (*OCSPStatus, error) {
	return verifyOCSP(der, cert, issuer, nonce, now, "test")
}
