package main

import (
	"context"
	"net"

	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"

	"github.com/tunnel-dev/tunnel/internal/admin"
	"github.com/tunnel-dev/tunnel/internal/audit"
)

// adminFlags are the admin listener's flags, on both roles.
func adminFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "admin", EnvVars: []string{"TUNNEL_ADMIN"}, Usage: "serve /metrics, /healthz, /readyz, POST /reload and POST /crl/refresh on `ADDR` (off by default; loopback only unless --admin-allow-remote)"},
		&cli.BoolFlag{Name: "admin-allow-remote", EnvVars: []string{"TUNNEL_ADMIN_ALLOW_REMOTE"}, Usage: "let --admin listen on a non-loopback address (its endpoints have no authentication)"},
	}
}

// checkAdmin validates --admin before anything starts.
func checkAdmin(c *cli.Context) error {
	if addr := c.String("admin"); addr != "" {
		if err := admin.CheckAddr(addr, c.Bool("admin-allow-remote")); err != nil {
			return flagError("--admin", "%q: %v", addr, err)
		}
	}
	return nil
}

// startAdmin starts the admin listener if --admin is set and returns a
// function that stops it and waits. cfg.Reload is the reload loop's request
// (see startReloads), so POST /reload reloads as SIGHUP does, on every
// platform.
func startAdmin(c *cli.Context, log *logrus.Entry, cfg admin.Config) (stop func(), err error) {
	addr := c.String("admin")
	if addr == "" {
		return func() {}, nil
	}
	alog := log.WithField(audit.Component, "admin")
	cfg.Log = alog
	h, err := admin.Handler(cfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, flagError("--admin", "%v", err)
	}
	alog.WithFields(logrus.Fields{audit.Event: audit.ListenerStarted, audit.Listen: ln.Addr().String()}).Info("admin listening")
	ctx, cancel := context.WithCancel(c.Context)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := admin.Serve(ctx, ln, h); err != nil {
			alog.WithError(err).Error("admin listener failed")
		}
	}()
	return func() { cancel(); <-done }, nil
}
