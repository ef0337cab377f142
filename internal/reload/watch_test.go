package reload_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/tunnel-dev/tunnel/internal/reload"
)

// changeWait bounds the wait for a change report; generous for a loaded
// machine, while the debounce is 100 ms.
const changeWait = 10 * time.Second

// startWatcher runs a Watcher of paths until the test ends.
func startWatcher(t *testing.T, interval time.Duration, paths ...string) *reload.Watcher {
	t.Helper()
	logger, _ := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	w, err := reload.NewWatcher(paths, reload.WatchConfig{Interval: interval, Log: logger})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := w.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return w
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// replace writes data to path the way editors and cert tools do: a new file
// beside it, renamed over it.
func replace(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	write(t, tmp, data)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func waitChange(t *testing.T, w *reload.Watcher, what string) {
	t.Helper()
	select {
	case <-w.Changes():
	case <-time.After(changeWait):
		t.Fatalf("no change reported after %s within %v", what, changeWait)
	}
}

// noChange asserts that nothing is reported for a while: long enough for
// several debounce periods to pass.
func noChange(t *testing.T, w *reload.Watcher, what string) {
	t.Helper()
	select {
	case <-w.Changes():
		t.Fatalf("change reported after %s", what)
	case <-time.After(500 * time.Millisecond):
	}
}

func TestWatcherRenameAndWrite(t *testing.T) {
	dir := t.TempDir()
	cert := filepath.Join(dir, "cert.pem")
	write(t, cert, "one")
	w := startWatcher(t, 0, cert)

	replace(t, cert, "two")
	waitChange(t, w, "an atomic rename")
	write(t, cert, "three")
	waitChange(t, w, "an in-place write")

	// Neighbours and rewrites with the same bytes are no change.
	write(t, filepath.Join(dir, "other.pem"), "x")
	replace(t, cert, "three")
	noChange(t, w, "an unrelated file and an identical rewrite")

	// A deleted file is a change, and so is its return.
	if err := os.Remove(cert); err != nil {
		t.Fatal(err)
	}
	waitChange(t, w, "a removal")
	write(t, cert, "four")
	waitChange(t, w, "a re-creation")
}

// A burst of writes is reported once it settles, and the report covers the
// last write.
func TestWatcherDebounce(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key.pem")
	write(t, key, "0")
	w := startWatcher(t, 0, key)
	for i := range 20 {
		replace(t, key, string(rune('a'+i)))
	}
	waitChange(t, w, "a burst")
	// The burst may end in a second report, but never in a third: each one
	// reads the files after the events that caused it.
	select {
	case <-w.Changes():
	case <-time.After(500 * time.Millisecond):
	}
	noChange(t, w, "the end of a burst")
}

// Kubernetes mounts a secret as name -> ..data/name, ..data -> ..TIMESTAMP,
// and updates it by writing a new ..TIMESTAMP directory and renaming a new
// ..data symlink over the old one.
func TestWatcherKubernetesSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	swap := func(gen, content string) {
		ts := filepath.Join(dir, "..2026_"+gen)
		if err := os.Mkdir(ts, 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(ts, "tls.crt"), content)
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	swap("1", "one")
	crt := filepath.Join(dir, "tls.crt")
	if err := os.Symlink(filepath.Join("..data", "tls.crt"), crt); err != nil {
		t.Fatal(err)
	}
	w := startWatcher(t, 0, crt)
	for i, gen := range []string{"2", "3", "4"} {
		swap(gen, "content "+gen)
		waitChange(t, w, "..data swap "+gen)
		old := filepath.Join(dir, "..2026_"+[]string{"1", "2", "3"}[i])
		if err := os.RemoveAll(old); err != nil {
			t.Fatal(err)
		}
	}
}

// The periodic re-read finds changes that no event announced: here, in a
// directory that did not exist when watching began.
func TestWatcherInterval(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "later")
	crl := filepath.Join(dir, "ca.crl")
	w := startWatcher(t, 50*time.Millisecond, crl)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, crl, "crl")
	waitChange(t, w, "a file appearing in a new directory")
}

// SetPaths starts watching new files from their current contents and keeps
// the baseline of the files it already watched.
func TestWatcherSetPaths(t *testing.T) {
	dir1, dir2 := t.TempDir(), t.TempDir()
	a, b := filepath.Join(dir1, "a"), filepath.Join(dir2, "b")
	write(t, a, "a")
	write(t, b, "b")
	w := startWatcher(t, 0, a)
	w.SetPaths([]string{a, b})
	noChange(t, w, "SetPaths")
	replace(t, b, "b2")
	waitChange(t, w, "a change in a newly watched directory")
	w.SetPaths([]string{b})
	replace(t, a, "a2")
	noChange(t, w, "a change to a file no longer watched")
}

func TestNewWatcherRejectsBadConfig(t *testing.T) {
	logger, _ := logtest.NewNullLogger()
	for name, cfg := range map[string]reload.WatchConfig{
		"no log":            {},
		"negative debounce": {Log: logger, Debounce: -1},
		"negative interval": {Log: logger, Interval: -1},
	} {
		if _, err := reload.NewWatcher(nil, cfg); err == nil {
			t.Errorf("NewWatcher(%s) succeeded", name)
		}
	}
}
