// Package reload owns when a running process reloads its configuration: one
// loop that runs reloads one at a time, whatever asked for them (SIGHUP, the
// admin endpoint, a watched file that changed), and the Watcher of files.
package reload

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
)

// Triggers: what asked for a reload, logged in its trigger field.
const (
	TriggerSIGHUP = "sighup"
	TriggerAdmin  = "admin"        // POST /reload on the admin listener
	TriggerFiles  = "file_changed" // a file event or the periodic re-read
)

// DefaultInterval is the usual Config.Interval: a re-read of the watched
// files every minute, the fallback where inotify sees nothing (NFS, FUSE).
const DefaultInterval = time.Minute

// FieldError reports a bad field of a Config or WatchConfig.
type FieldError struct {
	Field string // "Interval"
	Err   error
}

func (e *FieldError) Error() string { return "reload: " + e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// Func builds a complete new configuration and applies it, or changes
// nothing and returns why. It returns the files the next reload depends on
// (on error too, when it knows them; nil keeps the watched ones) and the
// fields of the reload_applied line.
type Func func(ctx context.Context, trigger string) (paths []string, fields logrus.Fields, err error)

// Config configures a Loop.
type Config struct {
	Paths    []string      // the files to watch at first
	Interval time.Duration // re-read the files this often even without an event; zero: never; negative is an error
	Apply    Func          // required
	Log      *logrus.Entry // receives reload_applied and reload_rejected; required

	// Begin, if set, runs on the loop's goroutine just before each reload
	// (systemd's RELOADING=1), and End just after it with its outcome
	// (READY=1 again): a reload that is rejected ends too.
	Begin func(trigger string)
	End   func(Result)
}

// Result is the outcome of one reload.
type Result struct {
	At      time.Time     // when it ended
	Trigger string        // TriggerSIGHUP, TriggerAdmin or TriggerFiles
	Took    time.Duration // how long Apply ran
	Err     error         // nil: applied; else why it was rejected
}

// Applied reports whether the reload was applied.
func (r Result) Applied() bool { return r.Err == nil }

// Loop runs Apply for every request, one at a time. Requests come through
// one channel: Request (the CLI's SIGHUP handler and POST /reload call it)
// and the Watcher's changes, which Run forwards as TriggerFiles. A request
// made while one is pending joins it, and a reload in progress is followed
// by one more for the requests made meanwhile. Each reload logs
// reload_applied or reload_rejected with its trigger and duration. Create it
// with New; Run it once. Request and Counts are safe for concurrent use.
type Loop struct {
	cfg     Config
	watcher *Watcher
	wake    chan struct{} // capacity 1: a request is pending

	mu      sync.Mutex
	pending string // the trigger of the pending request; "" if none; guarded by mu

	applied, rejected atomic.Uint64
	last              atomic.Pointer[Result] // the last reload; nil before the first
	lastApplied       atomic.Pointer[Result]
	lastRejected      atomic.Pointer[Result]
}

// New checks cfg and returns a Loop watching cfg.Paths, whose current
// contents are the baseline. It starts nothing.
func New(cfg Config) (*Loop, error) {
	switch {
	case cfg.Apply == nil:
		return nil, errors.New("reload: Config.Apply is nil")
	case cfg.Log == nil:
		return nil, errors.New("reload: Config.Log is nil")
	}
	w, err := NewWatcher(cfg.Paths, WatchConfig{Interval: cfg.Interval, Log: cfg.Log})
	if err != nil {
		return nil, err
	}
	return &Loop{cfg: cfg, watcher: w, wake: make(chan struct{}, 1)}, nil
}

// Request asks for a reload and returns at once. An operator's request
// (any trigger but TriggerFiles) outranks a pending file change, so the
// reload that serves both says who asked: an operator's reload also
// refetches the CRLs.
func (l *Loop) Request(trigger string) {
	l.mu.Lock()
	if l.pending == "" || l.pending == TriggerFiles {
		l.pending = trigger
	}
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default: // a wake-up is pending already
	}
}

// Counts returns how many reloads were applied and rejected since start.
func (l *Loop) Counts() (applied, rejected uint64) { return l.applied.Load(), l.rejected.Load() }

// Last returns the last reload, and false if none ran yet.
func (l *Loop) Last() (Result, bool) { return load(&l.last) }

// LastApplied and LastRejected return the last reload that was applied and
// the last that was rejected, and false if there was none.
func (l *Loop) LastApplied() (Result, bool)  { return load(&l.lastApplied) }
func (l *Loop) LastRejected() (Result, bool) { return load(&l.lastRejected) }

func load(p *atomic.Pointer[Result]) (Result, bool) {
	if r := p.Load(); r != nil {
		return *r, true
	}
	return Result{}, false
}

// Run watches the files and runs the requested reloads until ctx ends; it
// returns once the reload in progress and the watcher are done. A watcher
// that can do nothing (no file notifications and no Interval) is logged,
// and reloads then come from Request only.
func (l *Loop) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		if err := l.watcher.Run(ctx); err != nil {
			l.cfg.Log.WithError(err).Warn("cannot watch files; reloading on SIGHUP only")
		}
	})
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-l.watcher.Changes():
				l.Request(TriggerFiles)
			}
		}
	})
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.wake:
		}
		l.mu.Lock()
		trigger := l.pending
		l.pending = ""
		l.mu.Unlock()
		if trigger != "" {
			l.run(ctx, trigger)
		}
	}
}

// run applies one reload, logs its outcome and records it.
func (l *Loop) run(ctx context.Context, trigger string) {
	if l.cfg.Begin != nil {
		l.cfg.Begin(trigger)
	}
	start := time.Now()
	paths, fields, err := l.cfg.Apply(ctx, trigger)
	if paths != nil {
		l.watcher.SetPaths(paths)
	}
	res := &Result{At: time.Now(), Trigger: trigger, Took: time.Since(start), Err: err}
	l.last.Store(res)
	if err != nil {
		l.lastRejected.Store(res)
	} else {
		l.lastApplied.Store(res)
	}
	if l.cfg.End != nil {
		defer l.cfg.End(*res)
	}
	took := res.Took.Milliseconds()
	if err != nil {
		l.rejected.Add(1)
		l.cfg.Log.WithFields(logrus.Fields{
			audit.Event: audit.ReloadRejected, audit.Reason: "load_failed", audit.Trigger: trigger,
			audit.Error: err.Error(), audit.DurationMS: took,
		}).Error("reload rejected; the running configuration stays")
		return
	}
	l.applied.Add(1)
	l.cfg.Log.WithFields(fields).WithFields(logrus.Fields{
		audit.Event: audit.ReloadApplied, audit.Trigger: trigger, audit.DurationMS: took,
	}).Info("reload applied")
}
