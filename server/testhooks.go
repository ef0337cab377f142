//go:build tunnel_testhooks

package server

import (
	"os"
	"time"
)

// This file exists only in binaries built with -tags tunnel_testhooks (the
// end-to-end tests' build). While the file TUNNEL_TEST_HOLD_SESSION names
// exists, a session whose handshake passed waits before it is tracked: the
// tests use it to land a revocation in the gap between a handshake's check
// and the session's registration, where no Recheck can see it. Release
// builds have no such file or variable.
func testHoldSession() {
	path := os.Getenv("TUNNEL_TEST_HOLD_SESSION")
	if path == "" {
		return
	}
	for {
		if _, err := os.Stat(path); err != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
