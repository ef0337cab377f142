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
	store   *trust.Store
	rc      *trust.RevocationChecker // nil when only checking
	log     *logrus.Entry
	stapler *trust.Stapler // the server's OCSP stapler; nil for none, and when only checking
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

	// For ops.go: the main loops' liveness (nil: they turn), for the
	// systemd watchdog; the short STATUS= line; the role's part of the
	// admin status; closing a live session by id (admin.ErrNoSession when
	// none has it).
	alive() error
	statusLine() string
	status(st *admin.Status)
	closeSession(id string) error

	// swapMaterial applies next, the settings last applied with a live
	// identity source's new material, and returns how many sessions it
	// closed (identity.go).
	swapMaterial(ctx context.Context, next *config.Settings) (closed int, err error)
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
	ctx := c.Context
	id, s, err := openIdentity(ctx, s, log)
	if err != nil {
		return &configError{err: err}
	}
	defer id.close()
	store := trust.NewStore(s.Material)
	rc := trust.NewRevocationChecker(s.Revocation, store, log)
	defer rc.Close()
	if err := id.openStapler(ctx, s, store, log); err != nil {
		return &configError{err: err}
	}
	run, err := r.open(s, roleTrust{store: store, rc: rc, log: log, stapler: id.stapler})
	if err != nil {
		return problemError(s, err)
	}
	if err := run.bind(ctx); err != nil {
		return err
	}
	rl := &reloader{role: r, in: in, running: s, current: s, run: run, rc: rc, id: id, token: token, log: log}
	op := newOps(r.name, run, store, rc, log)
	loop, stopReload, err := startReloads(ctx, log, reload.Config{Interval: s.ReloadInterval, Paths: rl.paths(s.Values), Apply: rl.apply,
		Begin: op.reloading, End: op.reloaded})
	if err != nil {
		return problemError(s, err)
	}
	defer stopReload()
	op.setLoop(loop)
	defer id.follow(ctx, rl.identityChanged)()
	logTrust(log, s.Material)
	logWarnings(log, s)
	log.WithField("revocation", s.Revocation.Summary(len(s.TLS.CRLFiles))).Info("revocation checking of " + r.chains)
	rc.Start(ctx)
	b := thisBuild()
	acfg := admin.Config{
		Reload:       func() { loop.Request(reload.TriggerAdmin) },
		Ready:        func() error { return errors.Join(run.ready(), id.ready()) },
		Notes:        id.notes,
		RefreshCRLs:  rc.Refresh,
		Status:       op.status,
		CloseSession: run.closeSession,
		Collectors: append([]prometheus.Collector{run.collector(), admin.RevocationCollector(rc), admin.OCSPCollector(rc),
			admin.ReloadCollector(loop.Counts), admin.BuildInfoCollector(b.Version, b.GoVersion, b.Commit),
			admin.CertificateCollector(r.name, store.Material), admin.LastReloadCollector(op.lastReloads)}, id.collectors()...),
	}
	if x, ok := run.(interface{ exposes() map[string]error }); ok { // a server's reverse tunnels
		acfg.Exposes = x.exposes
	}
	stopAdmin, err := startAdmin(ctx, log, s, token, acfg)
	if err != nil {
		return err
	}
	defer stopAdmin()
	defer op.start(ctx)() // READY=1: listeners bound, revocation bootstrap over, admin up
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
			s, more = checkIdentity(c.Context, s)
			probs = append(probs, more...)
		}
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
	id      *identity
	token   *admin.Token
	log     *logrus.Entry

	// mu makes reloads and a live identity source's changes take turns.
	mu      sync.Mutex
	current *config.Settings // the settings last applied, with their material; guarded by mu
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
	rl.mu.Lock()
	defer rl.mu.Unlock()
	v, probs := config.Resolve(rl.in)
	if len(probs) > 0 {
		return nil, nil, &problemsError{list: probs}
	}
	paths := rl.paths(v)
	s, probs := v.Settings()
	if len(probs) > 0 {
		rl.id.rejected(v, probs)
		return paths, nil, errors.New(probs[0].String())
	}
	if err := rl.id.same(s); err != nil {
		return paths, nil, err
	}
	s = rl.id.material(s)
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
	rl.current = s
	rl.id.reloaded(s)
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

// startReloads runs cfg.Apply on SIGHUP, on each loop.Request (POST
// /reload), and whenever one of the watched files changes, one reload at a
// time, until the returned stop is called; stop waits for the reload in
// progress. cfg.Log is log.
func startReloads(ctx context.Context, log *logrus.Entry, cfg reload.Config) (loop *reload.Loop, stop func(), err error) {
	cfg.Log = log
	loop, err = reload.New(cfg)
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
// fingerprint, and warns (cert_expiring) if it expires soon; ops repeats
// the warning daily while it runs.
func logTrust(log *logrus.Entry, m *trust.Material) {
	leaf := m.Certificate.Leaf
	if m.SPIFFE != nil {
		// SVIDs live hours and rotate by themselves: no expiry warning.
		log.WithFields(trust.IdentityOf(leaf).Fields()).WithFields(logrus.Fields{"not_after": leaf.NotAfter.UTC().Format(time.RFC3339), "ca_certs": len(m.CACerts),
			"spiffe_id": m.SPIFFE.ID.String()}).Info("own certificate: X.509-SVID from the SPIFFE Workload API")
		return
	}
	if left := time.Until(leaf.NotAfter); left < certWarnWithin {
		logExpiring(log.WithField("ca_certs", len(m.CACerts)), leaf, left)
		return
	}
	log.WithFields(trust.IdentityOf(leaf).Fields()).WithFields(logrus.Fields{"not_after": leaf.NotAfter.UTC().Format(time.RFC3339), "ca_certs": len(m.CACerts)}).
		Info("own certificate loaded")
}

// logWarnings logs each of s's warnings as a config_warning line.
func logWarnings(log *logrus.Entry, s *config.Settings) {
	for _, w := range s.Warnings() {
		log.WithFields(logrus.Fields{audit.Event: audit.ConfigWarning, audit.Warning: w.Kind, audit.Flag: s.Values.Flag(w.Key)}).Warn(w.Msg)
	}
}
