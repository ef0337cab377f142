package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"

	"github.com/tunnel-dev/tunnel/admin"
	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/reload"
	"github.com/tunnel-dev/tunnel/trust"
)

// The role driver: start, check and reload, the same for both roles. What
// differs is a role (roles.go).

// role is what the driver needs to know of the server or the client.
type role struct {
	name     string           // "server" or "client"
	settings func() []setting // its rows of the settings table
	chains   string           // whose chains its revocation checker checks, for the start-up line
	// open builds the role from s, with the trust the driver made. It binds
	// nothing and starts nothing, so a reload and `tunnel check` can build
	// one to learn whether a start would refuse s.
	open func(s *config.Settings, t roleTrust) (running, error)
}

// roleTrust is what the driver makes of the settings for a role.
type roleTrust struct {
	store *trust.Store
	rc    *trust.RevocationChecker // nil when only checking
	log   *logrus.Entry
}

// running is a role built from its settings.
type running interface {
	bind(ctx context.Context) error  // its listeners; the error names the setting
	run(ctx context.Context) error   // until ctx ends; logs its end
	ready() error                    // for /readyz
	collector() prometheus.Collector // its metrics
	// reload applies next to the running role and returns the role's
	// fields of the reload_applied line.
	reload(ctx context.Context, next *config.Settings) (logrus.Fields, error)
}

// loadSettings resolves in and builds its settings. The error is a
// *configError: the config file's problems (all of them, behind the
// first), or the first problem of the values.
func loadSettings(in *config.Input) (*config.Settings, error) {
	v, probs := config.Resolve(in)
	if len(probs) > 0 {
		return nil, &configError{err: &problemsError{list: probs}}
	}
	s, probs := v.Settings()
	if len(probs) > 0 {
		return nil, &configError{err: errors.New(probs[0].String())}
	}
	return s, nil
}

// problemError is err, a library's, as a *configError naming the setting at
// fault and where its value came from.
func problemError(s *config.Settings, err error) error {
	return &configError{err: errors.New(s.Values.Problem(err).String())}
}

// quietLog is the log of a role built only to be checked.
func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

// start runs the role of command c until ctx ends.
func (r role) start(c *cli.Context, stderr io.Writer) error {
	in, err := captureInput(c, r.name, r.settings())
	if err != nil {
		return err
	}
	s, err := loadSettings(in)
	if err != nil {
		return err
	}
	log := logrus.NewEntry(s.Log.Logger(stderr)).WithField(audit.Component, r.name)
	token, err := admin.NewToken(s.Admin.TokenFile)
	if err != nil {
		return problemError(s, err)
	}
	store := trust.NewStore(s.Material)
	rc := trust.NewRevocationChecker(s.Revocation, store, log)
	defer rc.Close()
	run, err := r.open(s, roleTrust{store: store, rc: rc, log: log})
	if err != nil {
		return problemError(s, err)
	}
	ctx := c.Context
	if err := run.bind(ctx); err != nil {
		return err
	}
	rl := &reloader{role: r, in: in, running: s, run: run, rc: rc, token: token, log: log}
	loop, stopReload, err := startReloads(ctx, log, s.ReloadInterval, rl.paths(s.Values), rl.apply)
	if err != nil {
		return problemError(s, err)
	}
	defer stopReload()
	logTrust(log, s.Material)
	logWarnings(log, s)
	log.WithField("revocation", s.Revocation.Summary(len(s.TLS.CRLFiles))).Info("revocation checking of " + r.chains)
	rc.Start(ctx)
	acfg := admin.Config{
		Reload:      func() { loop.Request(reload.TriggerAdmin) },
		Ready:       run.ready,
		RefreshCRLs: rc.Refresh,
		Collectors:  []prometheus.Collector{run.collector(), admin.RevocationCollector(rc), admin.ReloadCollector(loop.Counts)},
	}
	if x, ok := run.(interface{ exposes() map[string]error }); ok { // a server's reverse tunnels
		acfg.Exposes = x.exposes
	}
	stopAdmin, err := startAdmin(ctx, log, s, token, acfg)
	if err != nil {
		return err
	}
	defer stopAdmin()
	return run.run(ctx)
}

// check is `tunnel check` of the role of command c: it loads everything a
// start would and prints a summary, or every problem found and exits 2.
func (r role) check(c *cli.Context, stdout, stderr io.Writer) error {
	in, err := captureInput(c, r.name, r.settings())
	if err != nil {
		return err
	}
	v, probs := config.Resolve(in)
	if v != nil {
		s, more := v.Settings()
		probs = append(probs, more...)
		if s != nil {
			store := trust.NewStore(s.Material)
			rc := trust.NewRevocationChecker(s.Revocation, store, quietLog())
			defer rc.Close()
			if _, err := r.open(s, roleTrust{store: store, rc: rc, log: quietLog()}); err != nil {
				probs = append(probs, v.Problem(err))
			}
			if len(probs) == 0 {
				s.WriteSummary(stdout)
				return nil
			}
		}
	}
	for _, p := range probs {
		fmt.Fprintln(stderr, p.String())
	}
	return &configError{err: fmt.Errorf("%d problem(s) found", len(probs))}
}

// reloader applies a new configuration to a running role: the whole
// start-up load, so that a reload refuses exactly what a start would, then
// the role's own reload.
type reloader struct {
	role    role
	in      *config.Input
	running *config.Settings // what the process started with
	run     running
	rc      *trust.RevocationChecker
	token   *admin.Token
	log     *logrus.Entry
}

// paths are the files a configuration depends on: those of its values and
// the admin token file.
func (rl *reloader) paths(v *config.Values) []string {
	p := v.Paths()
	if f := rl.token.Path(); f != "" && !slices.Contains(p, f) {
		p = append(p, f)
	}
	return p
}

func (rl *reloader) apply(ctx context.Context, trigger string) ([]string, logrus.Fields, error) {
	v, probs := config.Resolve(rl.in)
	if len(probs) > 0 {
		return nil, nil, &problemsError{list: probs}
	}
	paths := rl.paths(v)
	s, probs := v.Settings()
	if len(probs) > 0 {
		return paths, nil, errors.New(probs[0].String())
	}
	if _, err := rl.role.open(s, roleTrust{store: trust.NewStore(s.Material), log: quietLog()}); err != nil {
		return paths, nil, errors.New(v.Problem(err).String())
	}
	applyToken, err := rl.token.Reload()
	if err != nil {
		return paths, nil, errors.New(v.At("admin_token_file", "%v", err).String())
	}
	fields, err := rl.run.reload(ctx, s)
	if err != nil {
		return paths, nil, err
	}
	applyToken()
	logWarnings(rl.log, s)
	if trigger != reload.TriggerFiles {
		rl.rc.Refresh() // an operator asked: refetch the CRLs too
	}
	for k, val := range trust.IdentityOf(s.Material.Certificate.Leaf).Fields() {
		fields[k] = val
	}
	if rs := s.RestartNeeded(rl.running); len(rs) > 0 {
		fields[audit.RestartNeeded] = strings.Join(rs, ",")
		rl.log.WithField(audit.RestartNeeded, strings.Join(rs, ",")).Warn("these settings changed but take effect only after a restart")
	}
	return paths, fields, nil
}

// startReloads runs apply on SIGHUP, on each loop.Request (POST /reload),
// and whenever one of the watched files changes, one reload at a time,
// until the returned stop is called; stop waits for the reload in progress.
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

// logTrust logs which certificate the process presents, by serial and
// fingerprint, and warns if it expires soon.
func logTrust(log *logrus.Entry, m *trust.Material) {
	leaf := m.Certificate.Leaf
	e := log.WithFields(trust.IdentityOf(leaf).Fields()).WithFields(logrus.Fields{"not_after": leaf.NotAfter.UTC().Format(time.RFC3339), "ca_certs": len(m.CACerts)})
	if left := time.Until(leaf.NotAfter); left < 7*24*time.Hour {
		e.Warnf("own certificate expires in %v", left.Round(time.Minute))
		return
	}
	e.Info("own certificate loaded")
}

// logWarnings logs each of s's warnings as a config_warning line.
func logWarnings(log *logrus.Entry, s *config.Settings) {
	for _, w := range s.Warnings() {
		log.WithFields(logrus.Fields{audit.Event: audit.ConfigWarning, audit.Warning: w.Kind, audit.Flag: s.Values.Flag(w.Key)}).Warn(w.Msg)
	}
}
