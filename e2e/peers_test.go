package e2e

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Helpers for the tests against software we did not write (stunnel,
// openssl, haproxy, PostgreSQL): find the tool, run it as a child process
// that dies with the test, and wait for its port.

// requireTool returns the path of a third-party tool. When it is missing
// the test is skipped, loudly, unless CI is set: .ci/run installs every
// tool, so there a missing one is a failure, never a skip.
func requireTool(t *testing.T, name string, paths ...string) string {
	t.Helper()
	for _, p := range paths {
		if matches, _ := filepath.Glob(p); len(matches) > 0 {
			slices.Sort(matches)
			return matches[len(matches)-1] // the newest version of a versioned dir
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed, and CI is set: .ci/run must install it (apt package list)", name)
	}
	t.Skipf("SKIPPING: %s is not installed (CI would fail here; install it, or run .ci/run)", name)
	return ""
}

// freeAddr returns host:port with a port that was free a moment ago, for
// tools that cannot report the port they bound.
func freeAddr(t *testing.T, host string) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// extProc is a third-party process started by a test, with its output.
type extProc struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{} // closed when it has exited
}

// lockedBuffer is a bytes.Buffer safe for the exec package's copier and the
// test reading it at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer // guarded by mu
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startExt runs a third-party program with its stdout and stderr collected.
// It is killed (by its pid) when the test ends, and its output is logged
// if the test failed.
func startExt(t *testing.T, path string, args ...string) *extProc {
	t.Helper()
	p := &extProc{name: filepath.Base(path), out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.CommandContext(t.Context(), path, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", path, err)
	}
	p.name = fmt.Sprintf("%s[%d]", p.name, p.cmd.Process.Pid)
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("---- output of %s ----\n%s", p.name, lastLines(p.out.String(), 40))
		}
	})
	return p
}

// kill kills the process by its pid and waits for it.
func (p *extProc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Kill()
	<-p.done
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// waitListening polls until addr accepts TCP connections, or fails the
// test after waitTimeout or when p exits first.
func waitListening(t *testing.T, p *extProc, addr string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited before listening on %s:\n%s", p.name, addr, lastLines(p.out.String(), 20))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: nothing listening on %s after %v", p.name, addr, waitTimeout)
		}
		time.Sleep(20 * time.Millisecond) // poll interval, not synchronisation
	}
}

// writeFile writes content to name in dir and returns the path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// serverArgsFrom is serverArgs with --allow replaced by allow.
func serverArgsFrom(pk *pki, listen, allow string, routes ...string) []string {
	return withFlag(serverArgs(pk, listen, routes...), "--allow", allow)
}
