//go:build tunnel_testhooks

package alive

import (
	"os"
	"time"
)

// This file exists only in binaries built with -tags tunnel_testhooks (the
// end-to-end tests' build). While the file TUNNEL_TEST_WEDGE names exists,
// Beat blocks, on the goroutine of the loop that called it: that loop stops
// turning exactly as a deadlocked one would, so the tests can watch the
// watchdog pings stop. Release builds have no such file or variable.
func testWedge(string) {
	path := os.Getenv("TUNNEL_TEST_WEDGE")
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
