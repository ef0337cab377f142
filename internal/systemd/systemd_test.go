package systemd

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// notifySocket stands up a unixgram socket as NOTIFY_SOCKET and returns a
// function that returns the messages received so far.
func notifySocket(t *testing.T) func() []string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", path)
	msgs := make(chan string, 1000)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	var got []string
	return func() []string {
		for {
			select {
			case m := <-msgs:
				got = append(got, m)
			case <-time.After(50 * time.Millisecond):
				return got
			}
		}
	}
}

func TestNewNotifierWithoutSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n := NewNotifier(logrus.New())
	if n != nil {
		t.Fatal("NewNotifier without NOTIFY_SOCKET is not nil")
	}
	n.Ready("x") // a nil Notifier sends nothing and does not panic
	n.Reloading("x")
	n.Reloaded("x")
	n.Stopping("x")
	n.Status("x")
	n.Watchdog(context.Background(), time.Second, func() error { return nil })
}

// The Notifier keeps systemd's order: nothing before READY=1 but READY=1;
// RELOADING=1 (with MONOTONIC_USEC) and READY=1 pair up; nothing after
// STOPPING=1.
func TestNotifierSequence(t *testing.T) {
	recv := notifySocket(t)
	n := NewNotifier(logrus.New())
	n.Reloading("too early")
	n.Reloaded("too early")
	n.Ready("serving")
	n.Ready("twice")
	n.Reloading("reloading (sighup)")
	n.Reloading("nested")
	n.Reloaded("done")
	n.Reloaded("done twice")
	n.Status("2 sessions")
	n.Stopping("stopping")
	n.Reloading("after stop")
	n.Status("after stop")
	n.Stopping("twice")
	got := recv()
	if len(got) != 5 {
		t.Fatalf("got %d messages %q, want 5", len(got), got)
	}
	if got[0] != "READY=1\nSTATUS=serving" {
		t.Errorf("first %q", got[0])
	}
	lines := strings.Split(got[1], "\n")
	if len(lines) != 3 || lines[0] != "RELOADING=1" || !strings.HasPrefix(lines[1], "MONOTONIC_USEC=") || lines[2] != "STATUS=reloading (sighup)" {
		t.Errorf("reload begins with %q, want RELOADING=1, MONOTONIC_USEC=..., STATUS=", got[1])
	}
	if got[2] != "READY=1\nSTATUS=done" || got[3] != "STATUS=2 sessions" || got[4] != "STOPPING=1\nSTATUS=stopping" {
		t.Errorf("then %q", got[2:])
	}
}

// WATCHDOG=1 goes out every interval/2 while alive is nil and not while it
// fails; the change each way is logged once.
func TestWatchdogOnlyWhileAlive(t *testing.T) {
	recv := notifySocket(t)
	logger, hook := logtest.NewNullLogger()
	n := NewNotifier(logger)
	var stuck atomic.Bool
	alive := func() error {
		if stuck.Load() {
			return errors.New("accept loop: stuck")
		}
		return nil
	}
	n.Watchdog(context.Background(), 0, alive) // no interval: returns at once
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	n.Ready("")
	go func() { defer close(done); n.Watchdog(ctx, 100*time.Millisecond, alive) }()
	defer func() { cancel(); <-done }()

	count := func(msgs []string) (k int) {
		for _, m := range msgs {
			if m == "WATCHDOG=1" {
				k++
			}
		}
		return k
	}
	deadline := time.Now().Add(10 * time.Second)
	var msgs []string
	for count(msgs) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %q, want 3 pings", msgs)
		}
		msgs = recv()
	}
	stuck.Store(true)
	for !logged(hook, "watchdog_withheld") { // a look saw the stuck loop; pings before it were sent before it
		if time.Now().After(deadline) {
			t.Fatal("no watchdog_withheld line for a stuck loop")
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
	before := count(recv())
	time.Sleep(500 * time.Millisecond) // five intervals/2 without a ping
	if after := count(recv()); after != before {
		t.Fatalf("%d pings while the loop was stuck, want none", after-before)
	}
	stuck.Store(false)
	for count(recv()) == before {
		if time.Now().After(deadline) {
			t.Fatal("pings did not resume once the loop ran again")
		}
	}
	var withheld, resumed int
	for _, e := range hook.AllEntries() {
		switch e.Data["event"] {
		case "watchdog_withheld":
			withheld++
		case "watchdog_resumed":
			resumed++
		}
	}
	if withheld != 1 || resumed != 1 {
		t.Errorf("logged %d watchdog_withheld and %d watchdog_resumed lines, want 1 each", withheld, resumed)
	}
}

func TestWatchdogInterval(t *testing.T) {
	for _, tc := range []struct {
		usec, pid string
		want      time.Duration
		err       bool
	}{
		{"", "", 0, false},
		{"30000000", "", 30 * time.Second, false},
		{"2000000", "1", 0, false}, // another process's
		{"soon", "", 0, true},
		{"-5", "", 0, true},
	} {
		t.Setenv("WATCHDOG_USEC", tc.usec)
		t.Setenv("WATCHDOG_PID", tc.pid)
		got, err := WatchdogInterval()
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: %v, %v; want %v, error %v", tc.usec, tc.pid, got, err, tc.want, tc.err)
		}
	}
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"", "tunnel", "tunnel-server.socket", "db_1"} {
		if err := CheckName(ok); err != nil {
			t.Errorf("CheckName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"a:b", "a b", "tab\t", "é", strings.Repeat("x", 256)} {
		if err := CheckName(bad); err == nil {
			t.Errorf("CheckName(%q) = nil, want an error", bad)
		}
	}
	if n, ok := SocketName("systemd:tunnel"); !ok || n != "tunnel" {
		t.Errorf("SocketName(systemd:tunnel) = %q, %v", n, ok)
	}
	if _, ok := SocketName("127.0.0.1:8443"); ok {
		t.Error("SocketName of a host:port is ok")
	}
}

func TestPick(t *testing.T) {
	for _, tc := range []struct {
		name  string
		names []string
		named bool
		ask   string
		want  int
		err   string
	}{
		{"by name", []string{"a", "b"}, true, "b", 1, ""},
		{"a name repeated takes the first free", []string{"", "b", "b"}, true, "b", 1, ""},
		{"unknown name lists the others", []string{"a", "b"}, true, "c", 0, "names passed and not taken are a, b"},
		{"unnamed single socket, any name", []string{"LISTEN_FD_3"}, false, "tunnel", 0, ""},
		{"unnamed sockets, two", []string{"LISTEN_FD_3", "LISTEN_FD_4"}, false, "tunnel", 0, "2 sockets were passed without names"},
		{"empty name, one socket", []string{"a"}, true, "", 0, ""},
		{"empty name, two sockets", []string{"a", "b"}, true, "", 0, "takes the only socket"},
		{"all taken", []string{"", ""}, true, "a", 0, "already in use"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pick(tc.names, tc.named, tc.ask, "env")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("pick = %d, %v; want an error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("pick = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}

func logged(h *logtest.Hook, event string) bool {
	for _, e := range h.AllEntries() {
		if e.Data["event"] == event {
			return true
		}
	}
	return false
}
