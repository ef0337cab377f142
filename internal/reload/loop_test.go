package reload_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/tunnel-dev/tunnel/internal/reload"
)

// startLoop runs a Loop of apply over paths until the test ends.
func startLoop(t *testing.T, apply reload.Func, paths ...string) (*reload.Loop, *logtest.Hook) {
	t.Helper()
	logger, hook := logtest.NewNullLogger()
	l, err := reload.New(reload.Config{Paths: paths, Apply: apply, Log: logrus.NewEntry(logger)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return l, hook
}

// Requests made while a reload runs become one more reload after it, and
// an operator's request outranks the file change it joins: the reload that
// serves both is logged, and refetches CRLs, as the operator's.
func TestLoopCoalesces(t *testing.T) {
	var mu sync.Mutex
	var triggers []string
	release := make(chan struct{})
	started := make(chan struct{}, 10)
	apply := func(_ context.Context, trigger string) ([]string, logrus.Fields, error) {
		mu.Lock()
		triggers = append(triggers, trigger)
		mu.Unlock()
		started <- struct{}{}
		<-release
		return nil, logrus.Fields{"n": 1}, nil
	}
	l, hook := startLoop(t, apply)
	l.Request(reload.TriggerAdmin)
	<-started // the first reload runs; these three join one pending request
	l.Request(reload.TriggerFiles)
	l.Request(reload.TriggerSIGHUP)
	l.Request(reload.TriggerFiles)
	release <- struct{}{}
	<-started
	release <- struct{}{}
	waitFor(t, func() bool { a, _ := l.Counts(); return a == 2 })
	select {
	case <-started:
		t.Fatal("a third reload ran for requests that joined the second")
	case <-time.After(300 * time.Millisecond):
	}
	mu.Lock()
	defer mu.Unlock()
	if len(triggers) != 2 || triggers[0] != reload.TriggerAdmin || triggers[1] != reload.TriggerSIGHUP {
		t.Fatalf("reloads ran for %q, want [admin sighup]", triggers)
	}
	var applied int
	for _, e := range hook.AllEntries() {
		if e.Data["event"] == "reload_applied" && e.Data["n"] == 1 && e.Data["trigger"] != nil {
			applied++
		}
	}
	if applied != 2 {
		t.Errorf("%d reload_applied lines with the Func's fields, want 2", applied)
	}
}

// A rejected reload is counted and logged with its error; a watched file
// that changes asks for a reload of its own.
func TestLoopRejectedAndFiles(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "cert.pem")
	write(t, f, "one")
	calls := make(chan string, 10)
	apply := func(_ context.Context, trigger string) ([]string, logrus.Fields, error) {
		calls <- trigger
		return []string{f}, nil, errors.New("bad key")
	}
	l, hook := startLoop(t, apply, f)
	replace(t, f, "two")
	select {
	case tr := <-calls:
		if tr != reload.TriggerFiles {
			t.Fatalf("trigger %q, want %q", tr, reload.TriggerFiles)
		}
	case <-time.After(changeWait):
		t.Fatal("a changed file did not ask for a reload")
	}
	waitFor(t, func() bool { _, r := l.Counts(); return r == 1 })
	waitFor(t, func() bool {
		for _, e := range hook.AllEntries() {
			if e.Data["event"] == "reload_rejected" && e.Data["error"] == "bad key" && e.Data["trigger"] == reload.TriggerFiles {
				return true
			}
		}
		return false
	})
}

func TestNewLoopRejectsBadConfig(t *testing.T) {
	logger, _ := logtest.NewNullLogger()
	apply := func(context.Context, string) ([]string, logrus.Fields, error) { return nil, nil, nil }
	_, err := reload.New(reload.Config{Apply: apply, Log: logrus.NewEntry(logger), Interval: -time.Second})
	var fe *reload.FieldError
	if !errors.As(err, &fe) || fe.Field != "Interval" || fe.Err.Error() != "-1s is negative" {
		t.Errorf("New(negative interval) = %v, want a FieldError for Interval", err)
	}
	if _, err := reload.New(reload.Config{Log: logrus.NewEntry(logger)}); err == nil {
		t.Error("New without Apply succeeded")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(changeWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", changeWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Begin runs before each reload and End after it with its outcome, on the
// loop's goroutine, in order; Last, LastApplied and LastRejected keep the
// outcomes (systemd's RELOADING=1/READY=1 and the admin status use them).
func TestLoopBeginEndAndLast(t *testing.T) {
	var mu sync.Mutex
	var seq []string
	fail := errors.New("bad key")
	n := 0
	apply := func(context.Context, string) ([]string, logrus.Fields, error) {
		mu.Lock()
		defer mu.Unlock()
		seq = append(seq, "apply")
		n++
		if n == 2 {
			return nil, nil, fail
		}
		return nil, logrus.Fields{}, nil
	}
	logger, _ := logtest.NewNullLogger()
	l, err := reload.New(reload.Config{Apply: apply, Log: logrus.NewEntry(logger),
		Begin: func(tr string) { mu.Lock(); seq = append(seq, "begin "+tr); mu.Unlock() },
		End: func(r reload.Result) {
			mu.Lock()
			seq = append(seq, fmt.Sprintf("end %s %v", r.Trigger, r.Applied()))
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Last(); ok {
		t.Fatal("Last before any reload reports one")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	l.Request(reload.TriggerSIGHUP)
	waitFor(t, func() bool { a, _ := l.Counts(); return a == 1 })
	l.Request(reload.TriggerAdmin)
	waitFor(t, func() bool { _, r := l.Counts(); return r == 1 })
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(seq) == 6 })
	mu.Lock()
	got := strings.Join(seq, ", ")
	mu.Unlock()
	if want := "begin sighup, apply, end sighup true, begin admin, apply, end admin false"; got != want {
		t.Errorf("sequence %q, want %q", got, want)
	}
	last, ok := l.Last()
	if !ok || last.Trigger != reload.TriggerAdmin || !errors.Is(last.Err, fail) {
		t.Errorf("Last() = %+v, %v; want the rejected admin reload", last, ok)
	}
	if a, ok := l.LastApplied(); !ok || a.Trigger != reload.TriggerSIGHUP || a.At.After(last.At) {
		t.Errorf("LastApplied() = %+v, %v; want the sighup reload, before the last", a, ok)
	}
	if r, ok := l.LastRejected(); !ok || r != last {
		t.Errorf("LastRejected() = %+v, %v; want %+v", r, ok, last)
	}
}
