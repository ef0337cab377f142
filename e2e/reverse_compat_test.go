package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Reverse tunnels against peers that predate them, both ways round: the
// real binary of the last commit before them, built from git at test time
// (about 5 s with a warm build cache), not a mock of what it would do.

// oldCommit is the commit before reverse tunnels (issue 18's base): its
// server answers a version-2 header bad_header, and its client resets any
// stream the server opens.
const oldCommit = "a849d28"

var (
	oldOnce sync.Once
	oldBin  string
	oldErr  error
	oldSkip string
)

// oldTunnel returns the tunnel binary built from oldCommit, building it
// once (into the directory of the binary under test, which TestMain
// removes). Without git, or in a checkout without that commit (a shallow
// clone, a tarball), the test is skipped, loudly; in CI a full checkout
// that lacks it fails.
func oldTunnel(t *testing.T) string {
	t.Helper()
	oldOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			oldErr = err
			return
		}
		root := filepath.Dir(strings.TrimSpace(string(out)))
		if _, err := exec.LookPath("git"); err != nil {
			oldSkip = "git is not installed"
			return
		}
		if out, err := exec.Command("git", "-C", root, "rev-parse", "--is-shallow-repository").Output(); err != nil || strings.TrimSpace(string(out)) != "false" {
			oldSkip = fmt.Sprintf("%s is not a full git checkout (%v)", root, err)
			return
		}
		if err := exec.Command("git", "-C", root, "cat-file", "-e", oldCommit+"^{commit}").Run(); err != nil {
			oldErr = fmt.Errorf("commit %s is not in %s: %v", oldCommit, root, err)
			return
		}
		src, err := os.MkdirTemp(filepath.Dir(tunnelBin), "old-src-")
		if err != nil {
			oldErr = err
			return
		}
		start := time.Now()
		archive := exec.Command("git", "-C", root, "archive", "--format=tar", oldCommit)
		untar := exec.Command("tar", "-x", "-C", src)
		untar.Stdin, _ = archive.StdoutPipe()
		if err := untar.Start(); err != nil {
			oldErr = err
			return
		}
		if err := archive.Run(); err != nil {
			oldErr = fmt.Errorf("git archive %s: %w", oldCommit, err)
			return
		}
		if err := untar.Wait(); err != nil {
			oldErr = fmt.Errorf("untar %s: %w", oldCommit, err)
			return
		}
		bin := filepath.Join(filepath.Dir(tunnelBin), "tunnel-"+oldCommit)
		build := exec.Command("go", "build", "-tags", "tunnel_testhooks", "-o", bin, "./cmd/tunnel")
		build.Dir = src
		if out, err := build.CombinedOutput(); err != nil {
			oldErr = fmt.Errorf("go build of %s: %w\n%s", oldCommit, err, out)
			return
		}
		t.Logf("built the tunnel binary of %s in %v", oldCommit, time.Since(start).Round(time.Millisecond))
		oldBin = bin
	})
	switch {
	case oldErr != nil:
		t.Fatal(oldErr)
	case oldSkip != "" && os.Getenv("CI") != "":
		t.Fatalf("%s, and CI is set: the old-peer tests need the history of commit %s", oldSkip, oldCommit)
	case oldSkip != "":
		t.Skipf("SKIPPING: %s: cannot build the tunnel of commit %s to test against (CI would fail here)", oldSkip, oldCommit)
	}
	return oldBin
}

// TestReverseOldClient: a client of the commit before reverse tunnels
// against a server with an expose. It cannot publish, so the server never
// opens a stream toward it (an old client resets such a stream, and one
// older still leaves it unacknowledged until its session dies): inbound
// connections of the expose are reset at once, while the old client's
// forwards work as before and its session stays up.
func TestReverseOldClient(t *testing.T) {
	t.Parallel()
	old := oldTunnel(t)
	pk := pkiDir(t)
	srv := exposeServer(t, pk, []string{"echo=" + echoBackend(t)}, []string{exposeSpec("svc", []string{"cn:app1"})})
	cli := startProcBin(t, old, nil, clientArgs(pk, srv.addr(t), "echo")...)
	cli.waitEvent(t, waitTimeout, "the old client's session_opened", isEvent("session_opened"))
	fwd := cli.forwardAddr(t, "echo")
	echoCheck(t, fwd, 1, 1<<20)
	for range 5 {
		d := expectReset(t, "127.0.0.1", srv.exposeAddr(t, "svc"), []byte("hello"))
		if d > 5*time.Second {
			t.Errorf("an inbound connection with only an old client took %v to be reset", d)
		}
	}
	srv.waitEvent(t, waitTimeout, "conn_rejected no_publisher", isEvent("conn_rejected", "component", "expose", "reason", "no_publisher"))
	echoCheck(t, fwd, 2, 1<<20) // the old client's session is untouched
	if evs := srv.matching(func(ev map[string]any) bool { return ev["direction"] == "reverse" }); len(evs) > 0 {
		t.Errorf("the server logged reverse streams toward a client that never published: %v", evs[0])
	}
	for _, p := range []*proc{srv, cli} {
		if evs := p.matching(isEvent("session_closed")); len(evs) > 0 {
			t.Errorf("%s: session_closed %v", p.name, evs[0])
		}
		if evs := p.matching(isEvent("protocol_violation")); len(evs) > 0 {
			t.Errorf("%s: protocol_violation %v", p.name, evs[0])
		}
	}
}

// TestReverseOldServer: a publishing client against a server of the
// commit before reverse tunnels, over one session that also carries a
// forward. The old server answers the publish header bad_header at once,
// as it answers any header version it does not know; the client logs that
// the server cannot take publications (publish_refused, reason
// server_unsupported), does not retry on that session, and its forward
// works as before.
func TestReverseOldServer(t *testing.T) {
	t.Parallel()
	old := oldTunnel(t)
	pk := pkiDir(t)
	echo := echoBackend(t)
	srv := startProcBin(t, old, nil, serverArgs(pk, "127.0.0.1:0", "echo="+echo)...)
	args := append(clientArgs(pk, srv.addr(t), "echo"), "--publish", "svc="+echo)
	cli := startProc(t, args...)
	start := time.Now()
	ev := cli.waitEvent(t, waitTimeout, "publish_refused", isEvent("publish_refused", "expose", "svc"))
	t.Logf("the client learned the old server cannot take publications %v after it started: %v", time.Since(start).Round(time.Millisecond), ev["msg"])
	if ev["status"] != "bad_header" || ev["reason"] != "server_unsupported" || ev["level"] != "error" {
		t.Errorf("publish_refused: %v; want status bad_header, reason server_unsupported, level error", ev)
	}
	ev = srv.waitEvent(t, waitTimeout, "the old server's stream_refused", isEvent("stream_refused", "status", "bad_header"))
	if msg, _ := ev["error"].(string); !strings.Contains(msg, "version 2") {
		t.Errorf("the old server's stream_refused error %q does not name version 2", msg)
	}
	echoCheck(t, cli.forwardAddr(t, "echo"), 3, 1<<20)
	time.Sleep(1500 * time.Millisecond) // a window for a retry on the same session, which must not come
	if n := len(srv.matching(isEvent("stream_refused", "status", "bad_header"))); n != 1 {
		t.Errorf("the old server refused %d publish headers on one session, want 1 (no retry until the next session)", n)
	}
	var b bytes.Buffer
	for _, e := range cli.matching(isEvent("session_closed")) {
		fmt.Fprintf(&b, "%v\n", e)
	}
	if b.Len() > 0 {
		t.Errorf("the client's session ended:\n%s", b.String())
	}
}
