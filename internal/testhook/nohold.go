//go:build !tunnel_testhooks

// Package testhook holds the end-to-end tests' ways into a running binary.
// They exist only in binaries built with -tags tunnel_testhooks (the
// tests' build); in any other build every hook does nothing.
package testhook

// Hold does nothing outside the tunnel_testhooks build.
func Hold(string) {}
