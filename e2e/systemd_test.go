//go:build linux

package e2e

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The systemd integration against the real tools and the real protocol:
// systemd-socket-activate (Debian's systemd package) passes the listening
// socket, and a unixgram socket stands in for NOTIFY_SOCKET, recording each
// datagram the binary sends.

// notifyRecorder is a NOTIFY_SOCKET: it records every datagram with the
// time it came.
type notifyRecorder struct {
	path string
	mu   sync.Mutex
	msgs []notifyMsg // guarded by mu
}

type notifyMsg struct {
	at   time.Time
	text string
}

func newNotifyRecorder(t *testing.T) *notifyRecorder {
	t.Helper()
	dir, err := os.MkdirTemp("", "tn") // short: sun_path holds 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	r := &notifyRecorder{path: filepath.Join(dir, "notify")}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: r.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			r.mu.Lock()
			r.msgs = append(r.msgs, notifyMsg{time.Now(), string(buf[:n])})
			r.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return r
}

func (r *notifyRecorder) all() []notifyMsg {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]notifyMsg(nil), r.msgs...)
}

// states returns the first line of each datagram that is not a watchdog
// ping or a bare STATUS= refresh: the state changes systemd acts on.
func (r *notifyRecorder) states() []string {
	var out []string
	for _, m := range r.all() {
		first, _, _ := strings.Cut(m.text, "\n")
		if first != "WATCHDOG=1" && !strings.HasPrefix(first, "STATUS=") {
			out = append(out, first)
		}
	}
	return out
}

// pings returns when each WATCHDOG=1 came.
func (r *notifyRecorder) pings() []time.Time {
	var out []time.Time
	for _, m := range r.all() {
		if m.text == "WATCHDOG=1" {
			out = append(out, m.at)
		}
	}
	return out
}

// waitStates polls until the state changes number n and returns them.
func (r *notifyRecorder) waitStates(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		if s := r.states(); len(s) >= n {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("notify socket: %q after %v, want %d state changes", r.states(), waitTimeout, n)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

// waitPings polls until n pings have come.
func (r *notifyRecorder) waitPings(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for len(r.pings()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("notify socket: %d WATCHDOG=1 after %v, want %d", len(r.pings()), waitTimeout, n)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

// message returns the datagram of the i-th state change.
func (r *notifyRecorder) message(i int) string {
	k := 0
	for _, m := range r.all() {
		first, _, _ := strings.Cut(m.text, "\n")
		if first == "WATCHDOG=1" || strings.HasPrefix(first, "STATUS=") {
			continue
		}
		if k == i {
			return m.text
		}
		k++
	}
	return ""
}

func monotonicUsec(t *testing.T) int64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano() / 1000
}

// TestSystemdNotifySequence: a server under a NOTIFY_SOCKET tells systemd
// READY=1 once it listens, RELOADING=1 with MONOTONIC_USEC and READY=1
// around every reload (SIGHUP, POST /reload, and a rejected one), pings the
// watchdog at half of WATCHDOG_USEC, and says STOPPING=1 when SIGTERM
// starts the drain, after which nothing more comes.
func TestSystemdNotifySequence(t *testing.T) {
	pk := pkiDir(t)
	rec := newNotifyRecorder(t)
	cfg := filepath.Join(t.TempDir(), "server.yaml")
	if err := os.WriteFile(cfg, []byte("allow: [127.0.0.1/32]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append(serverArgs(pk, "127.0.0.1:0", "echo="+echoBackend(t)), "--admin", "127.0.0.1:0", "--config", cfg, "--reload-interval", "0",
		"--shutdown-timeout", "2s")
	srv := startProcEnv(t, []string{"NOTIFY_SOCKET=" + rec.path, "WATCHDOG_USEC=1000000"}, args...)
	cli := startProc(t, clientArgs(pk, srv.addr(t), "echo")...)
	admin := "http://" + srv.adminAddr(t)
	rec.waitStates(t, 1)
	rec.waitPings(t, 3)
	pings := rec.pings()
	for i := 1; i < len(pings); i++ {
		if gap := pings[i].Sub(pings[i-1]); gap < 300*time.Millisecond || gap > 2*time.Second {
			t.Errorf("watchdog ping %d came %v after the previous one, want about 500ms (half of WATCHDOG_USEC=1s)", i, gap)
		}
	}
	t.Logf("watchdog pings with WATCHDOG_USEC=1s: %d, gaps %v", len(pings), gaps(pings))

	before := monotonicUsec(t)
	srv.signal(t, syscall.SIGHUP)
	srv.waitEvent(t, waitTimeout, "reload_applied (sighup)", isEvent("reload_applied", "trigger", "sighup"))
	rec.waitStates(t, 3)
	if code, _ := httpDo(t, "POST", admin+"/reload"); code != 202 {
		t.Fatalf("POST /reload: %d", code)
	}
	srv.waitEvent(t, waitTimeout, "reload_applied (admin)", isEvent("reload_applied", "trigger", "admin"))
	rec.waitStates(t, 5)
	renameInto(t, cfg, []byte("allow: [not-a-cidr]\n"))
	srv.signal(t, syscall.SIGHUP) // joins the file change, if the watcher saw it first
	srv.waitEvent(t, waitTimeout, "reload_rejected", isEvent("reload_rejected"))
	rec.waitStates(t, 7)
	after := monotonicUsec(t)

	holdStream(t, cli.forwardAddr(t, "echo"), 1000) // the drain waits for it, --shutdown-timeout
	srv.signal(t, syscall.SIGTERM)
	if code := srv.wait(t, waitTimeout); code != 0 {
		t.Fatalf("server exited %d", code)
	}
	stopAt := time.Now()
	time.Sleep(1500 * time.Millisecond) // three watchdog half-intervals: nothing may follow STOPPING=1
	got := rec.states()
	want := []string{"READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1", "STOPPING=1"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("state changes %q, want %q", got, want)
	}
	for _, i := range []int{1, 3, 5} {
		msg := rec.message(i)
		v, ok := strings.CutPrefix(strings.Split(msg, "\n")[1], "MONOTONIC_USEC=")
		usec, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil || usec < before || usec > after {
			t.Errorf("reload %d: %q: want MONOTONIC_USEC between %d and %d (CLOCK_MONOTONIC around the reloads)", i, msg, before, after)
		}
	}
	if m := rec.message(0); !strings.Contains(m, "STATUS=0 sessions, 0 streams; no reload yet") {
		t.Errorf("READY=1 at start: %q, want a STATUS= line with sessions, streams and no reload yet", m)
	}
	if m := rec.message(4); !strings.Contains(m, "applied") {
		t.Errorf("READY=1 after POST /reload: %q, want STATUS= naming the applied reload", m)
	}
	if m := rec.message(6); !strings.Contains(m, "rejected") {
		t.Errorf("READY=1 after the bad config: %q, want STATUS= naming the rejected reload", m)
	}
	all := rec.all()
	var stoppingAt time.Time
	for _, m := range all {
		if strings.HasPrefix(m.text, "STOPPING=1") {
			stoppingAt = m.at
		} else if !stoppingAt.IsZero() {
			t.Errorf("%q sent after STOPPING=1", m.text)
		}
	}
	if evs := srv.matching(isEvent("watchdog_withheld")); len(evs) > 0 {
		t.Errorf("the drain's stopped accept loop was logged as a wedge: %v", evs[0])
	}
	t.Logf("%d datagrams; STOPPING=1 came %v before the process exited (a stream held the drain)", len(all), stopAt.Sub(stoppingAt).Round(time.Millisecond))
}

func gaps(ts []time.Time) []time.Duration {
	var out []time.Duration
	for i := 1; i < len(ts); i++ {
		out = append(out, ts[i].Sub(ts[i-1]).Round(time.Millisecond))
	}
	return out
}

// wedgeCheck runs p (started with TUNNEL_TEST_WEDGE=wedge and a watchdog of
// 1s) until it pings, wedges its main loop with the test build's hook (the
// loop blocks where it beats, as a deadlock would hold it), and checks that
// the pings stop, that watchdog_withheld is logged, and that they resume
// once the loop is let go. It returns how long after the wedge the last
// ping came.
func wedgeCheck(t *testing.T, p *proc, rec *notifyRecorder, wedge string) time.Duration {
	t.Helper()
	rec.waitPings(t, 3)
	if err := os.WriteFile(wedge, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	wedgedAt := time.Now()
	p.waitEvent(t, waitTimeout, "watchdog_withheld", isEvent("watchdog_withheld"))
	withheldAt := time.Now()
	quiet := len(rec.pings())
	time.Sleep(3 * time.Second) // six half-intervals
	if n := len(rec.pings()) - quiet; n > 0 {
		t.Fatalf("%d watchdog pings while the loop was wedged, want none", n)
	}
	pings := rec.pings()
	last := pings[len(pings)-1].Sub(wedgedAt)
	t.Logf("wedged: last ping %v after the wedge, watchdog_withheld after %v; no ping for the next 3s",
		last.Round(time.Millisecond), withheldAt.Sub(wedgedAt).Round(time.Millisecond))
	os.Remove(wedge)
	p.waitEvent(t, waitTimeout, "watchdog_resumed", isEvent("watchdog_resumed"))
	rec.waitPings(t, len(pings)+2)
	return last
}

// TestSystemdWatchdogWedgedServer: the server pings only while its accept
// loop turns; a wedged accept loop stops the pings (systemd would restart
// it after WatchdogSec), and they come back when it turns again.
func TestSystemdWatchdogWedgedServer(t *testing.T) {
	pk := pkiDir(t)
	rec := newNotifyRecorder(t)
	wedge := filepath.Join(t.TempDir(), "wedge")
	srv := startProcEnv(t, []string{"NOTIFY_SOCKET=" + rec.path, "WATCHDOG_USEC=1000000", "TUNNEL_TEST_WEDGE=" + wedge},
		serverArgs(pk, "127.0.0.1:0", "echo="+echoBackend(t))...)
	addr := srv.addr(t)
	last := wedgeCheck(t, srv, rec, wedge)
	if last > 8*time.Second {
		t.Errorf("pings went on %v after the accept loop wedged, want within its 5s promise and a tick", last)
	}
	cli := startProc(t, clientArgs(pk, addr, "echo")...)
	echoCheck(t, cli.forwardAddr(t, "echo"), 7, 64<<10) // the accept loop serves again
}

// TestSystemdWatchdogWedgedClient: the client pings only while its session
// keeper turns.
func TestSystemdWatchdogWedgedClient(t *testing.T) {
	pk := pkiDir(t)
	srv := startProc(t, serverArgs(pk, "127.0.0.1:0", "echo="+echoBackend(t))...)
	rec := newNotifyRecorder(t)
	wedge := filepath.Join(t.TempDir(), "wedge")
	cli := startProcEnv(t, []string{"NOTIFY_SOCKET=" + rec.path, "WATCHDOG_USEC=1000000", "TUNNEL_TEST_WEDGE=" + wedge},
		clientArgs(pk, srv.addr(t), "echo")...)
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	if s := rec.waitStates(t, 1); s[0] != "READY=1" {
		t.Fatalf("first state %q, want READY=1", s[0])
	}
	if m := rec.message(0); !strings.Contains(m, "STATUS=") {
		t.Errorf("client READY=1: %q, want a STATUS= line", m)
	}
	last := wedgeCheck(t, cli, rec, wedge)
	if last > 8*time.Second {
		t.Errorf("pings went on %v after the keeper wedged, want within its 5s promise and a tick", last)
	}
	echoCheck(t, cli.forwardAddr(t, "echo"), 8, 64<<10)
}

// TestSystemdSocketActivation: systemd-socket-activate binds the port and
// starts the server on the first connection, passing the socket as
// --fdname=tunnel; the server serves on it (--listen systemd:tunnel), bytes
// move through it intact, and the allowlist refuses a source it does not
// list on the inherited socket exactly as on its own.
func TestSystemdSocketActivation(t *testing.T) {
	activate := requireTool(t, "systemd-socket-activate")
	pk := pkiDir(t)
	echo := echoBackend(t)
	srv, addr := startActivated(t, activate, append([]string{"--fdname=tunnel", tunnelBin},
		withFlag(serverArgs(pk, "systemd:tunnel", "echo="+echo), "--listen", "systemd:tunnel")...))
	cli := startProc(t, clientArgs(pk, addr, "echo")...) // its dial starts the server
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	if got := srv.addr(t); got != addr {
		t.Errorf("server listens on %s, want the passed socket %s", got, addr)
	}
	fwd := cli.forwardAddr(t, "echo")
	echoCheck(t, fwd, 11, 4<<20)
	t.Logf("4 MiB echoed through the socket systemd-socket-activate passed (SHA-256 checked)")

	// The reset may come before the dial returns, or at the first read.
	if c, err := dialFrom("127.0.0.2", addr); err == nil {
		defer c.Close()
		assertClosed(t, c, 10*time.Second)
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("dial from 127.0.0.2: %v, want a reset", err)
	}
	ev := srv.waitEvent(t, waitTimeout, "conn_rejected for 127.0.0.2", isEvent("conn_rejected", "reason", "ip_not_allowed", "addr", "127.0.0.2"))
	if a, _ := ev["addr"].(string); !strings.HasPrefix(a, "127.0.0.2:") {
		t.Errorf("conn_rejected addr %q, want host:port", a)
	}
	echoCheck(t, fwd, 12, 64<<10) // the allowed client is still served
}

// startActivated starts systemd-socket-activate (activate) with args on a
// free loopback port, and returns it and the port. freeAddr's pick can be
// taken by another test before the tool binds it: then it tries another
// port, and fails the test after three.
func startActivated(t *testing.T, activate string, args []string) (*proc, string) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		addr := freeAddr(t, "127.0.0.1")
		p := startProcBin(t, activate, nil, append([]string{"-l", addr}, args...)...)
		if activated(p, addr) {
			return p, addr
		}
		if attempt == 3 {
			t.Fatalf("systemd-socket-activate bound none of 3 free ports (the last %s)", addr)
		}
		t.Logf("port %s was taken meanwhile; another one", addr)
	}
}

// activated waits for systemd-socket-activate's "Listening on" line,
// and reports false if it failed to bind instead.
func activated(p *proc, addr string) bool {
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		lines := strings.Join(p.lines, "\n")
		p.mu.Unlock()
		switch {
		case strings.Contains(lines, "Listening on "+addr):
			return true
		case strings.Contains(lines, "Address already in use"), p.exited():
			return false
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
	return false
}

// TestSystemdSocketErrors: a systemd: address that names no passed socket
// is a configuration error at start-up naming the flag and what was
// passed (exit 2), with and without sockets from systemd-socket-activate.
func TestSystemdSocketErrors(t *testing.T) {
	pk := pkiDir(t)
	args := withFlag(serverArgs(pk, "systemd:tunnel", "echo=127.0.0.1:1"), "--listen", "systemd:tunnel")
	_, stderr, code := runTunnel(t, args...)
	if code != 2 || !strings.Contains(stderr, "--listen") || !strings.Contains(stderr, "no sockets were passed") {
		t.Errorf("no sockets passed: exit %d, stderr %q; want 2 naming --listen and that none were passed", code, stderr)
	}
	_, stderr, code = runTunnel(t, withFlag(args, "--listen", "systemd:a:b")...)
	if code != 2 || !strings.Contains(stderr, "--listen") {
		t.Errorf("bad name: exit %d, stderr %q; want 2 naming --listen", code, stderr)
	}
	_, stderr, code = runTunnel(t, append(clientArgs(pk, "127.0.0.1:1"), "--forward", "systemd:db=db")...)
	if code != 2 || !strings.Contains(stderr, "--forward") || !strings.Contains(stderr, "no sockets were passed") {
		t.Errorf("client forward: exit %d, stderr %q; want 2 naming --forward", code, stderr)
	}

	activate := requireTool(t, "systemd-socket-activate")
	p, addr := startActivated(t, activate, append([]string{"--fdname=other", tunnelBin}, args...))
	c, err := net.DialTimeout("tcp", addr, 5*time.Second) // starts the server
	if err == nil {
		defer c.Close()
	}
	if code := p.wait(t, waitTimeout); code != 2 {
		t.Fatalf("server with the wrong socket name exited %d, want 2", code)
	}
	p.mu.Lock()
	out := strings.Join(p.lines, "\n")
	p.mu.Unlock()
	if !strings.Contains(out, `no socket named "tunnel"`) || !strings.Contains(out, "other") {
		t.Errorf("stderr %q: want the missing name and the names passed", out)
	}
}
