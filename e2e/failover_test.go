package e2e

import (
	"strings"
	"testing"
	"time"
)

// failoverBound is the bound on moving a session to another server
// after its server died; the tests allow several times that on this small
// shared machine and log what they measured.
const failoverBound = 2 * time.Second

// killProc kills p by its pid, as a crash would, and waits for it.
func killProc(t *testing.T, p *proc) {
	t.Helper()
	p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(waitTimeout):
		t.Fatalf("%s did not die", p.name)
	}
}

// addrHost returns the host part of an addr field ("127.0.0.2:4711").
func addrHost(ev map[string]any) string {
	a, _ := ev["addr"].(string)
	host, _, _ := strings.Cut(a, ":")
	return host
}

// TestClientFailover: a client given two --server addresses moves its
// session to the second when the first dies, within the bound, and new
// streams work there.
func TestClientFailover(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	echo := echoBackend(t)
	a := startProc(t, serverArgs(pk, "127.0.0.1:0", "echo="+echo)...)
	b := startProc(t, serverArgs(pk, "127.0.0.1:0", "echo="+echo)...)
	args := append(clientArgs(pk, a.addr(t), "echo"), "--server", b.addr(t))
	cli := startProc(t, args...)
	cli.waitEvent(t, waitTimeout, "session_opened on A", isEvent("session_opened", "addr", a.addr(t)))
	fwd := cli.forwardAddr(t, "echo")
	echoCheck(t, fwd, 91, 1<<20)

	start := time.Now()
	killProc(t, a)
	cli.waitEvent(t, waitTimeout, "session_opened on B", isEvent("session_opened", "addr", b.addr(t)))
	took := time.Since(start)
	t.Logf("session moved from the killed server to the other in %v (bound %v)", took.Round(time.Millisecond), failoverBound)
	if took > 3*failoverBound {
		t.Errorf("failover took %v, want well within %v", took, failoverBound)
	}
	echoCheck(t, fwd, 92, 1<<20)
	b.waitEvent(t, waitTimeout, "stream_closed on B", isEvent("stream_closed", "route", "echo"))
}
