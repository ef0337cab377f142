//go:build tunnel_testhooks

package main

import (
	"os"
	"time"
)

// This file exists only in binaries built with -tags tunnel_testhooks (the
// end-to-end tests' build): TUNNEL_TEST_CERT_WARN_EVERY shortens the
// period of the repeated cert_expiring warning (and the check, to a
// quarter of it), and TUNNEL_TEST_STATUS_EVERY the STATUS= refresh, so
// that a test can watch them repeat in seconds. Release builds have no such
// variables.
func init() {
	if d, err := time.ParseDuration(os.Getenv("TUNNEL_TEST_CERT_WARN_EVERY")); err == nil && d > 0 {
		certWarnEvery, certCheckEvery = d, d/4
	}
	if d, err := time.ParseDuration(os.Getenv("TUNNEL_TEST_STATUS_EVERY")); err == nil && d > 0 {
		statusEvery = d
	}
}
