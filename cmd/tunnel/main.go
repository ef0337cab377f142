// Command tunnel is a Layer-4 TCP tunnel with mutual TLS: one binary with a
// server role, a client role, a development CA and a demo.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	writeProfiles := startProfile() // nothing unless TUNNEL_CPUPROFILE or TUNNEL_MEMPROFILE is set
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	writeProfiles()
	os.Exit(code)
}
