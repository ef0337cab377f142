package reload

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/sirupsen/logrus"
)

// DefaultWatchDebounce is the quiet time a Watcher waits after the last
// event of a burst before it reads the files: an editor's save, a
// cert-manager or Kubernetes secret update and a cert+key rotation are each
// a burst of a few events within milliseconds.
const DefaultWatchDebounce = 100 * time.Millisecond

// maxDebounceWaits caps a burst: a Watcher checks after at most this many
// debounce periods since the first event, even if events keep coming.
const maxDebounceWaits = 10

// WatchConfig configures a Watcher.
type WatchConfig struct {
	// Debounce is the quiet time after the last file event before the files
	// are read; zero means DefaultWatchDebounce, negative is an error.
	Debounce time.Duration

	// Interval re-reads the files this often whatever the events, the
	// fallback where inotify sees nothing (NFS, FUSE); zero means never,
	// negative is an error.
	Interval time.Duration

	// Log receives watch errors at Warn and Debug level; required.
	Log logrus.FieldLogger
}

// Watcher tells when the contents of a set of files change. It watches
// the parent directory of each file (and of its symlink target), not the
// file, so it survives editors' atomic renames and Kubernetes' `..data`
// symlink swaps, debounces bursts of events, then compares a SHA-256 of
// each file's contents (read through its path) with what it saw last; only
// a difference is reported. A file that is missing or unreadable counts as
// a content of its own, so its return is a change too.
//
// Create it with NewWatcher; Run it once. SetPaths and Changes are safe
// for concurrent use.
type Watcher struct {
	cfg     WatchConfig
	changes chan struct{} // capacity 1: changes coalesce until read
	reset   chan struct{} // capacity 1: SetPaths asks Run to re-sync its directory watches

	mu    sync.Mutex
	paths []string            // guarded by mu
	seen  map[string][32]byte // contents last reported, by path; guarded by mu
}

// NewWatcher checks cfg and returns a Watcher of paths, taking their current
// contents as the baseline. It starts nothing.
func NewWatcher(paths []string, cfg WatchConfig) (*Watcher, error) {
	switch {
	case cfg.Log == nil:
		return nil, errors.New("reload: WatchConfig.Log is nil")
	case cfg.Debounce < 0:
		return nil, &FieldError{Field: "Debounce", Err: fmt.Errorf("%v is negative", cfg.Debounce)}
	case cfg.Interval < 0:
		return nil, &FieldError{Field: "Interval", Err: fmt.Errorf("%v is negative", cfg.Interval)}
	}
	if cfg.Debounce == 0 {
		cfg.Debounce = DefaultWatchDebounce
	}
	w := &Watcher{cfg: cfg, changes: make(chan struct{}, 1), reset: make(chan struct{}, 1)}
	w.SetPaths(paths)
	return w, nil
}

// Changes returns a channel that receives a value when the contents of a
// watched file differ from the last ones reported. Changes that happen
// before the value is received are reported by that one value.
func (w *Watcher) Changes() <-chan struct{} { return w.changes }

// SetPaths replaces the watched files, after a reload that named new ones.
// Files watched before keep their baseline; new ones take their current
// contents as theirs.
func (w *Watcher) SetPaths(paths []string) {
	w.mu.Lock()
	seen := make(map[string][32]byte, len(paths))
	for _, p := range paths {
		if h, ok := w.seen[p]; ok {
			seen[p] = h
		} else {
			seen[p] = contentHash(p)
		}
	}
	w.paths, w.seen = slices.Clone(paths), seen
	w.mu.Unlock()
	select {
	case w.reset <- struct{}{}:
	default:
	}
}

// Run watches until ctx ends, then releases the inotify watches and returns
// nil. If the file system offers no notifications it logs a warning and
// relies on Interval alone. It returns an error only if it could do neither.
func (w *Watcher) Run(ctx context.Context) error {
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		if w.cfg.Interval == 0 {
			return err
		}
		w.cfg.Log.WithError(err).Warn("file notifications unavailable; re-reading files periodically only")
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	if fsw != nil {
		defer fsw.Close()
		events, errs = fsw.Events, fsw.Errors
		w.syncDirs(fsw)
	}
	var tick <-chan time.Time
	if w.cfg.Interval > 0 {
		t := time.NewTicker(w.cfg.Interval)
		defer t.Stop()
		tick = t.C
	}
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	var burst time.Time // when the pending burst began; zero if none
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.reset:
			if fsw != nil {
				w.syncDirs(fsw)
			}
			w.check() // what changed before the new directories were watched
		case ev := <-events:
			w.cfg.Log.WithFields(logrus.Fields{"file": ev.Name, "op": ev.Op.String()}).Debug("file event")
			now := time.Now()
			if burst.IsZero() {
				burst = now
			}
			// Wait for quiet, but not forever under a steady stream.
			wait := min(w.cfg.Debounce, burst.Add(maxDebounceWaits*w.cfg.Debounce).Sub(now))
			debounce.Reset(max(wait, 0))
		case err := <-errs:
			// An overflow loses events: check soon, as if one came.
			w.cfg.Log.WithError(err).Warn("file watch error; re-reading the watched files")
			debounce.Reset(w.cfg.Debounce)
		case <-debounce.C:
			burst = time.Time{}
			w.check()
			if fsw != nil {
				w.syncDirs(fsw) // a swapped symlink may point into a new directory
			}
		case <-tick:
			w.check()
			if fsw != nil {
				w.syncDirs(fsw) // a directory that was missing may be back
			}
		}
	}
}

// check reads every watched file and signals Changes if one differs from
// the baseline, which it then moves forward.
func (w *Watcher) check() {
	w.mu.Lock()
	changed := false
	for _, p := range w.paths {
		if h := contentHash(p); h != w.seen[p] {
			w.seen[p] = h
			changed = true
		}
	}
	w.mu.Unlock()
	if changed {
		select {
		case w.changes <- struct{}{}:
		default:
		}
	}
}

// syncDirs makes fsw watch exactly the directories of the watched files
// and of their symlink targets.
func (w *Watcher) syncDirs(fsw *fsnotify.Watcher) {
	w.mu.Lock()
	paths := slices.Clone(w.paths)
	w.mu.Unlock()
	want := map[string]bool{}
	for _, p := range paths {
		if abs, err := filepath.Abs(p); err == nil {
			want[filepath.Dir(abs)] = true
		}
		if real, err := filepath.EvalSymlinks(p); err == nil {
			if abs, err := filepath.Abs(real); err == nil {
				want[filepath.Dir(abs)] = true
			}
		}
	}
	for _, d := range fsw.WatchList() {
		if !want[d] {
			_ = fsw.Remove(d) // a directory that is gone has no watch left to remove
		}
	}
	have := map[string]bool{}
	for _, d := range fsw.WatchList() {
		have[d] = true
	}
	for d := range want {
		if have[d] {
			continue
		}
		if err := fsw.Add(d); err != nil {
			w.cfg.Log.WithError(err).WithField("dir", d).Debug("cannot watch directory; the periodic re-read covers it")
		}
	}
}

// contentHash is the SHA-256 of the file at path, read through any
// symlinks; a file that cannot be read hashes its error's kind instead.
func contentHash(path string) [32]byte {
	b, err := os.ReadFile(path)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist):
			return sha256.Sum256([]byte("\x00missing"))
		default:
			return sha256.Sum256([]byte("\x00unreadable"))
		}
	}
	return sha256.Sum256(b)
}
