//go:build tunnel_testhooks

package trust

import (
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// This file exists only in binaries built with -tags tunnel_testhooks, which
// the end-to-end tests build so the CRL fetcher can reach a test server on
// 127.0.0.1, and so they can fill the CRL store's caps in seconds. Release
// builds do not contain it: there is no flag or variable an operator could
// leave on.
func init() {
	for _, s := range strings.Split(os.Getenv("TUNNEL_TEST_CRL_ALLOW"), ",") {
		if p, err := netip.ParsePrefix(strings.TrimSpace(s)); err == nil {
			testAllowPrefixes = append(testAllowPrefixes, p)
		}
	}
	// TUNNEL_TEST_CRL_CAPS=new_urls_per_minute=5,cached_crls=4,seen_urls=4
	for _, kv := range strings.Split(os.Getenv("TUNNEL_TEST_CRL_CAPS"), ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(kv), "=")
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			continue
		}
		switch k {
		case LimitFetchRate:
			storeLimitDefaults.NewURLsPerMinute = n
		case LimitCached:
			storeLimitDefaults.TrackedURLs = n
		case LimitSeenURLs:
			storeLimitDefaults.RefusedURLs = n
		}
	}
}
