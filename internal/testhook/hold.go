//go:build tunnel_testhooks

// Package testhook holds the end-to-end tests' ways into a running binary.
// They exist only in binaries built with -tags tunnel_testhooks (the
// tests' build); in any other build every hook does nothing.
package testhook

import (
	"os"
	"time"
)

// Hold blocks while the file that the environment variable env names
// exists, and returns at once when env is unset. The tests create the
// file to stop a goroutine at a chosen point and remove it to let it go.
func Hold(env string) {
	path := os.Getenv(env)
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
