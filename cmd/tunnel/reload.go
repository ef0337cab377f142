package main

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"

	"github.com/tunnel-dev/tunnel/client"
	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/reload"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/server"
	"github.com/tunnel-dev/tunnel/trust"
)

// reloadFlags are the reload flags of both roles.
func reloadFlags() []cli.Flag {
	return []cli.Flag{
		&cli.DurationFlag{Name: "reload-interval", Value: reload.DefaultInterval, EnvVars: []string{"TUNNEL_RELOAD_INTERVAL"},
			Usage: "re-read the certificate, key, CA, CRL and config files this often even without a file event (0: only on events and SIGHUP)"},
	}
}

// startReloads runs apply on SIGHUP, on each call of the returned request
// (POST /reload), and whenever one of the watched files changes, one
// reload at a time (reload.Loop), until the returned stop is called; stop
// waits for the reload in progress.
func startReloads(ctx context.Context, log *logrus.Entry, interval time.Duration, paths []string, apply reload.Func) (loop *reload.Loop, stop func(), err error) {
	loop, err = reload.New(reload.Config{Paths: paths, Interval: interval, Apply: apply, Log: log})
	if err != nil {
		return nil, nil, err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP) // never delivered on Windows, which has no SIGHUP
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { loop.Run(ctx) })
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				loop.Request(reload.TriggerSIGHUP)
			}
		}
	})
	return loop, func() {
		signal.Stop(hup)
		cancel()
		wg.Wait()
	}, nil
}

// operatorAsked reports whether an operator asked for this reload (SIGHUP,
// POST /reload) rather than a file change: such a reload refetches the CRLs
// too.
func operatorAsked(trigger string) bool { return trigger != reload.TriggerFiles }

// watchPaths are the files a configuration depends on: its TLS files, its
// config file and the admin token file.
func watchPaths(src trust.Sources, l *flagLayers, token *adminToken) []string {
	p := src.Paths()
	for _, f := range []string{l.cfgPath, token.path} {
		if f != "" && !slices.Contains(p, f) {
			p = append(p, f)
		}
	}
	return p
}

// restartNeeded names the flags whose resolved value in c differs from the
// running one, other than those a reload applies.
func restartNeeded(l *flagLayers, running, c *cli.Context, reloadable ...string) []string {
	var out []string
	for _, f := range l.flags {
		name := f.Names()[0]
		if slices.Contains(reloadable, name) || noConfigKey[name] {
			continue
		}
		if resolvedText(l, running, name) != resolvedText(l, c, name) {
			out = append(out, configKey(name))
		}
	}
	return out
}

func resolvedText(l *flagLayers, c *cli.Context, name string) string {
	if l.kinds[name] == kindList {
		return strings.Join(c.StringSlice(name), "\x00")
	}
	return c.String(name)
}

// reloadError makes a load error read the same as at start-up, with the
// key and line of a value that came from the config file.
func reloadError(err error, fc *fileConfig) error {
	var pe *problemsError
	if errors.As(err, &pe) {
		return err
	}
	return errors.New(fc.flagProblem(err).String())
}

// serverReloader applies a new server configuration to a running server:
// TLS material, allowlist, routes and their rules.
type serverReloader struct {
	layers  *flagLayers
	running *cli.Context // the resolved configuration the process started with
	log     *logrus.Entry
	srv     *server.Server
	store   *trust.Store
	filter  *netfilter.Filter
	rc      *trust.RevocationChecker
	token   *adminToken
}

// serverReloadable are the server flags a reload applies.
var serverReloadable = []string{"cert", "key", "ca", "crl", "allow", "route"}

func (r *serverReloader) apply(ctx context.Context, trigger string) ([]string, logrus.Fields, error) {
	c, fc, err := r.layers.resolve()
	if err != nil {
		return nil, nil, err
	}
	src, _ := tlsSources(c)
	paths := watchPaths(src, r.layers, r.token)
	// The whole start-up load, so a reload refuses exactly what a start
	// would; the checker it builds is never started.
	setup, err := loadServer(c, fc, r.log)
	if err != nil {
		return paths, nil, reloadError(err, fc)
	}
	setup.rc.Close()
	applyToken, err := r.token.reload()
	if err != nil {
		return paths, nil, err
	}
	m, al := setup.store.Material(), setup.cfg.Filter.Allowlist()
	closed, err := r.srv.Reload(server.State{Material: m, Allowlist: al, Routes: setup.cfg.Routes})
	if err != nil {
		return paths, nil, err
	}
	applyToken()
	logWarnings(r.log, append(allowWarnings(al), keyFileWarnings(c)...))
	if operatorAsked(trigger) {
		r.rc.Refresh()
	}
	fields := trust.IdentityOf(m.Certificate.Leaf).Fields()
	fields[audit.AllowPrefixes] = al.Len()
	fields[audit.Routes] = len(setup.cfg.Routes)
	fields[audit.SessionsClosed] = closed
	if rs := restartNeeded(r.layers, r.running, c, serverReloadable...); len(rs) > 0 {
		fields[audit.RestartNeeded] = strings.Join(rs, ",")
		r.log.WithField(audit.RestartNeeded, strings.Join(rs, ",")).Warn("these settings changed but take effect only after a restart")
	}
	if fc != nil && fc.ruled && fc.access == nil {
		r.log.Warn("routes from --route replace the config file's routes and their allow_identities/allow rules")
	}
	return paths, fields, nil
}

// clientReloader applies a new client configuration to a running client:
// its own certificate and key, the server CA bundle, CRL files, and the
// forward listeners.
type clientReloader struct {
	layers  *flagLayers
	running *cli.Context
	log     *logrus.Entry
	cl      *client.Client
	store   *trust.Store
	rc      *trust.RevocationChecker
	token   *adminToken
}

// clientReloadable are the client flags a reload applies.
var clientReloadable = []string{"cert", "key", "ca", "crl", "forward"}

func (r *clientReloader) apply(ctx context.Context, trigger string) ([]string, logrus.Fields, error) {
	c, fc, err := r.layers.resolve()
	if err != nil {
		return nil, nil, err
	}
	src, _ := tlsSources(c)
	paths := watchPaths(src, r.layers, r.token)
	setup, err := loadClient(c, fc, r.log)
	if err != nil {
		return paths, nil, reloadError(err, fc)
	}
	setup.rc.Close()
	applyToken, err := r.token.reload()
	if err != nil {
		return paths, nil, err
	}
	m := setup.store.Material()
	if err := r.cl.Reload(ctx, client.State{Material: m, Forwards: setup.cfg.Forwards}); err != nil {
		return paths, nil, err
	}
	applyToken()
	logWarnings(r.log, keyFileWarnings(c))
	if operatorAsked(trigger) {
		r.rc.Refresh()
	}
	fields := trust.IdentityOf(m.Certificate.Leaf).Fields()
	fields[audit.Forwards] = len(setup.cfg.Forwards)
	if rs := restartNeeded(r.layers, r.running, c, clientReloadable...); len(rs) > 0 {
		fields[audit.RestartNeeded] = strings.Join(rs, ",")
		r.log.WithField(audit.RestartNeeded, strings.Join(rs, ",")).Warn("these settings changed but take effect only after a restart")
	}
	return paths, fields, nil
}
