//go:build tunnel_testhooks

package trust

import (
	"net/netip"
	"os"
	"strings"
)

// This file exists only in binaries built with -tags tunnel_testhooks, which
// the end-to-end tests build so the CRL fetcher can reach a test server on
// 127.0.0.1. Release builds do not contain it: there is no flag or variable
// an operator could leave on.
func init() {
	for _, s := range strings.Split(os.Getenv("TUNNEL_TEST_CRL_ALLOW"), ",") {
		if p, err := netip.ParsePrefix(strings.TrimSpace(s)); err == nil {
			testAllowPrefixes = append(testAllowPrefixes, p)
		}
	}
}
