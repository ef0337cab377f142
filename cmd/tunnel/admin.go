package main

import (
	"context"
	"net"
	"sync/atomic"

	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"

	"github.com/tunnel-dev/tunnel/admin"
	"github.com/tunnel-dev/tunnel/internal/audit"
)

// adminFlags are the admin listener's flags, on both roles.
func adminFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "admin", EnvVars: []string{"TUNNEL_ADMIN"}, Usage: "serve /metrics, /healthz, /readyz, POST /reload and POST /crl/refresh on `ADDR` (off by default; loopback only unless --admin-allow-remote)"},
		&cli.BoolFlag{Name: "admin-allow-remote", EnvVars: []string{"TUNNEL_ADMIN_ALLOW_REMOTE"}, Usage: "let --admin listen on a non-loopback address (requires --admin-token-file)"},
		&cli.StringFlag{Name: "admin-token-file", EnvVars: []string{"TUNNEL_ADMIN_TOKEN_FILE"}, Usage: "`FILE` holding a bearer token that every admin request but /healthz and /readyz must carry (re-read on reload)"},
	}
}

// checkAdmin validates the admin flags before anything starts: the
// address, and a token file for a remote listener.
func checkAdmin(c *cli.Context) error {
	addr, tokenFile := c.String("admin"), c.String("admin-token-file")
	if addr == "" {
		if tokenFile != "" {
			return flagError("--admin-token-file", "given without --admin: there is no admin listener to protect")
		}
		return nil
	}
	if err := admin.CheckAddr(addr, c.Bool("admin-allow-remote")); err != nil {
		return flagError("--admin", "%q: %v", addr, err)
	}
	if c.Bool("admin-allow-remote") && tokenFile == "" {
		return flagError("--admin-allow-remote", "requires --admin-token-file: a network-facing admin listener would take POST /reload and serve /metrics to anyone who reaches it")
	}
	if tokenFile != "" {
		if _, err := admin.LoadToken(tokenFile); err != nil {
			return flagError("--admin-token-file", "%v", err)
		}
	}
	return nil
}

// adminToken is the admin listener's bearer token, re-read from its file
// on every reload. The zero value holds no token.
type adminToken struct {
	path string // --admin-token-file as the process started; "" for none
	cur  atomic.Pointer[[]byte]
}

// newAdminToken reads the token file named by c, if any.
func newAdminToken(c *cli.Context) (*adminToken, error) {
	t := &adminToken{path: c.String("admin-token-file")}
	apply, err := t.reload()
	if err != nil {
		return nil, err
	}
	apply()
	return t, nil
}

// reload re-reads the token file and returns the function that makes the
// new token current, for a reload to call once everything else checked
// out; on error nothing changes.
func (t *adminToken) reload() (apply func(), err error) {
	if t.path == "" {
		return func() {}, nil
	}
	tok, err := admin.LoadToken(t.path)
	if err != nil {
		return nil, flagError("--admin-token-file", "%v", err)
	}
	return func() { t.cur.Store(&tok) }, nil
}

// get returns the current token, or nil.
func (t *adminToken) get() []byte {
	if p := t.cur.Load(); p != nil {
		return *p
	}
	return nil
}

// startAdmin starts the admin listener if --admin is set and returns a
// function that stops it and waits. cfg.Reload is the reload loop's request
// (see startReloads), so POST /reload reloads as SIGHUP does, on every
// platform.
func startAdmin(c *cli.Context, log *logrus.Entry, token *adminToken, cfg admin.Config) (stop func(), err error) {
	addr := c.String("admin")
	if addr == "" {
		return func() {}, nil
	}
	alog := log.WithField(audit.Component, "admin")
	cfg.Log = alog
	cfg.Token = token.get
	h, err := admin.NewHandler(cfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		h.Close()
		return nil, flagError("--admin", "%v", err)
	}
	alog.WithFields(logrus.Fields{audit.Event: audit.ListenerStarted, audit.Listen: ln.Addr().String(),
		"token": token.path != ""}).Info("admin listening")
	ctx, cancel := context.WithCancel(c.Context)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := admin.Serve(ctx, ln, h); err != nil {
			alog.WithError(err).Error("admin listener failed")
		}
	}()
	return func() { cancel(); <-done; h.Close() }, nil
}
