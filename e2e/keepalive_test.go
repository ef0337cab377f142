//go:build unix

// SIGSTOP, which freezes the server here, exists only on Unix.

package e2e

import (
	"syscall"
	"testing"
	"time"
)

// TestDeadServerNoticed freezes the server (SIGSTOP: the TCP connection
// stays open, nothing answers) and checks that the client's keepalive drops
// the session within keepalive + keepalive-timeout, then redials and works
// once the server is back.
func TestDeadServerNoticed(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	backend := echoBackend(t)
	srv := startProc(t, serverArgs(pk, "127.0.0.1:0", "echo="+backend)...)
	cli := startProc(t, append(clientArgs(pk, srv.addr(t), "echo"),
		"--keepalive", "500ms", "--keepalive-timeout", "1s")...)
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	echoCheck(t, cli.forwardAddr(t, "echo"), 71, 1<<20)

	srv.signal(t, syscall.SIGSTOP)
	stopped := time.Now()
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			srv.cmd.Process.Signal(syscall.SIGCONT)
		}
	})
	// Bound: 0.5 s + 1 s; asserted with a wide margin for a busy machine.
	cli.waitEvent(t, 15*time.Second, "session_closed", isEvent("session_closed"))
	t.Logf("dead server noticed after %v (keepalive 500ms + timeout 1s)", time.Since(stopped).Round(10*time.Millisecond))

	srv.signal(t, syscall.SIGCONT)
	resumed = true
	cli.waitEventN(t, waitTimeout, 2, "second session_opened", isEvent("session_opened"))
	echoCheck(t, cli.forwardAddr(t, "echo"), 72, 1<<20)
}
