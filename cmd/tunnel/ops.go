package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/admin"
	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/reload"
	"github.com/tunnel-dev/tunnel/internal/systemd"
	"github.com/tunnel-dev/tunnel/trust"
)

// What the driver runs beside a role for the people who operate it:
// systemd's notifications and watchdog, the admin status and session
// close, and the daily warning about an expiring certificate.

// ops is that, for one running role. Create it with newOps; the reload
// hooks may run before start.
type ops struct {
	role    string
	run     running
	store   *trust.Store
	rc      *trust.RevocationChecker
	notify  *systemd.Notifier // nil outside systemd
	log     *logrus.Entry
	started time.Time

	mu   sync.Mutex
	loop *reload.Loop // set once startReloads made it; guarded by mu
}

func newOps(role string, run running, store *trust.Store, rc *trust.RevocationChecker, log *logrus.Entry) *ops {
	return &ops{role: role, run: run, store: store, rc: rc, notify: systemd.NewNotifier(log), log: log, started: time.Now()}
}

func (o *ops) setLoop(l *reload.Loop) {
	o.mu.Lock()
	o.loop = l
	o.mu.Unlock()
}

func (o *ops) reloads() *reload.Loop {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.loop
}

// reloading and reloaded are the reload loop's Begin and End: systemd
// hears RELOADING=1 before each reload and READY=1 after it, applied or
// not (Type=notify-reload waits for both).
func (o *ops) reloading(trigger string) {
	o.notify.Reloading("reloading (" + trigger + ")")
}

func (o *ops) reloaded(res reload.Result) {
	o.notify.Reloaded(o.statusLine(&res))
}

// statusLine is systemd's STATUS= line: what the role carries and the last
// reload (last, or the loop's when nil).
func (o *ops) statusLine(last *reload.Result) string {
	line := o.run.statusLine()
	if last == nil {
		if l := o.reloads(); l != nil {
			if r, ok := l.Last(); ok {
				last = &r
			}
		}
	}
	if last == nil {
		return line + "; no reload yet"
	}
	result := "applied"
	if !last.Applied() {
		result = "rejected"
	}
	return fmt.Sprintf("%s; last reload %s %s", line, last.At.UTC().Format(time.RFC3339), result)
}

// Intervals of ops' background work (variables so that the
// tunnel_testhooks build can shorten them; see testhooks.go).
var (
	statusEvery      = 5 * time.Second // systemd's STATUS= line is refreshed when it changed
	certCheckEvery   = time.Hour       // the own certificate's expiry is looked at
	certWarnEvery    = 24 * time.Hour  // and warned about again while it stays near
	certWarnWithin   = 7 * 24 * time.Hour
	watchdogInterval = systemd.WatchdogInterval
)

// start tells systemd the role is ready and runs, until ctx ends or the
// returned stop is called: the watchdog (when WATCHDOG_USEC is set), the
// STATUS= refresh, STOPPING=1 when ctx ends (the drain begins), and the
// daily expiry warning. stop waits for them.
func (o *ops) start(ctx context.Context) (stop func()) {
	o.notify.Ready(o.statusLine(nil))
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stopping := context.AfterFunc(ctx, func() {
		o.notify.Stopping("stopping: " + o.run.statusLine())
	})
	if every, err := watchdogInterval(); err != nil {
		o.log.WithError(err).Warn("ignoring the systemd watchdog setting")
	} else if every > 0 && o.notify == nil {
		o.log.Warn("WATCHDOG_USEC is set but NOTIFY_SOCKET is not: the watchdog cannot be pinged (set NotifyAccess=main)")
	} else if every > 0 {
		o.log.WithField("watchdog_ms", every.Milliseconds()).Info("pinging the systemd watchdog while the main loops run")
		wg.Go(func() { o.notify.Watchdog(ctx, every, o.run.alive) })
	}
	if o.notify != nil {
		wg.Go(func() { o.refreshStatus(ctx) })
	}
	wg.Go(func() { o.watchExpiry(ctx) })
	return func() {
		cancel()
		stopping()
		wg.Wait()
	}
}

// refreshStatus sends the STATUS= line whenever it changed, until ctx ends.
func (o *ops) refreshStatus(ctx context.Context) {
	tick := time.NewTicker(statusEvery)
	defer tick.Stop()
	last := o.statusLine(nil)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if line := o.statusLine(nil); line != last {
			o.notify.Status(line)
			last = line
		}
	}
}

// watchExpiry warns (cert_expiring) about the process's own certificate
// once it expires within certWarnWithin, and again every certWarnEvery
// while it stays so, until ctx ends: start-up's line alone is long gone
// from anyone's screen when the certificate runs out. A reload that brings
// a new certificate is seen at the next look.
func (o *ops) watchExpiry(ctx context.Context) {
	var warned string // fingerprint of the certificate last warned about
	var at time.Time  // and when
	tick := time.NewTicker(certCheckEvery)
	defer tick.Stop()
	first := true
	for {
		if m := o.store.Material(); m != nil && m.Certificate.Leaf != nil {
			leaf := m.Certificate.Leaf
			id := trust.IdentityOf(leaf)
			left := time.Until(leaf.NotAfter)
			switch {
			case left >= certWarnWithin:
			case m.SPIFFE != nil: // SVIDs live hours and rotate by themselves
			case first:
				warned, at = id.Fingerprint, time.Now() // logTrust warned at start-up
			case id.Fingerprint != warned || time.Since(at) >= certWarnEvery:
				warned, at = id.Fingerprint, time.Now()
				logExpiring(o.log, leaf, left)
			}
		}
		first = false
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// status is GET /status.
func (o *ops) status() admin.Status {
	now := time.Now()
	st := admin.Status{Role: o.role, Version: thisBuild().Version, PID: os.Getpid(), Started: o.started, Now: now,
		Sessions: []admin.Session{}, Revocation: admin.SourcesOf(o.rc.Sources(), now),
		Certificates: admin.Certificates(o.store.Material())}
	o.run.status(&st)
	if l := o.reloads(); l != nil {
		st.Reload.Applied, st.Reload.Rejected = l.Counts()
		if r, ok := l.Last(); ok {
			info := &admin.ReloadInfo{At: r.At, Trigger: r.Trigger, Result: "applied", DurationMS: r.Took.Milliseconds()}
			if r.Err != nil {
				info.Result, info.Error = "rejected", r.Err.Error()
			}
			st.Reload.Last = info
		}
	}
	return st
}

// lastReloads are the end times of the last applied and rejected reloads,
// for tunnel_last_reload_timestamp_seconds.
func (o *ops) lastReloads() (applied, rejected time.Time) {
	if l := o.reloads(); l != nil {
		if r, ok := l.LastApplied(); ok {
			applied = r.At
		}
		if r, ok := l.LastRejected(); ok {
			rejected = r.At
		}
	}
	return applied, rejected
}

// logExpiring logs cert_expiring for the own certificate leaf, which
// expires in left (negative: expired that long ago).
func logExpiring(log *logrus.Entry, leaf *x509.Certificate, left time.Duration) {
	e := log.WithFields(trust.IdentityOf(leaf).Fields()).WithFields(logrus.Fields{audit.Event: audit.CertExpiring,
		"not_after": leaf.NotAfter.UTC().Format(time.RFC3339), "expires_in_s": int64(left.Seconds())})
	if left <= 0 {
		e.Errorf("own certificate EXPIRED %v ago: peers refuse it; renew it and reload", (-left).Round(time.Minute))
		return
	}
	e.Warnf("own certificate expires in %v: renew it and reload", left.Round(time.Minute))
}
