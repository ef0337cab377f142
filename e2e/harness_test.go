// Package e2e runs the real tunnel binary as separate server and client
// processes and checks what a user would see: bytes, exit codes and logs.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// tunnelBin is the binary built once by TestMain.
var tunnelBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "tunnel-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if tunnelBin, err = buildTunnel(dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	// The test build's CRL fetcher may reach CRL servers that tests run on
	// 127.0.0.1 (see trust/testhooks.go); every child inherits this.
	os.Setenv("TUNNEL_TEST_CRL_ALLOW", "127.0.0.1/32")
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: goroutines leaked:", err)
			return 1
		}
	}
	return code
}

// buildTunnel builds ./cmd/tunnel of this module into dir and returns the
// binary's path. The binary is built without -race: it is the thing under
// test, not the test. It is built with the tunnel_testhooks tag, whose only
// effect is to let TUNNEL_TEST_CRL_ALLOW open the CRL fetcher's SSRF guard
// to the tests' CRL servers on loopback.
func buildTunnel(dir string) (string, error) {
	return buildTunnelTags(dir, "tunnel", "tunnel_testhooks")
}

// buildTunnelTags builds ./cmd/tunnel with the build tags into dir/name.
func buildTunnelTags(dir, name, tags string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module")
	}
	bin := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-tags", tags, "-o", bin, "./cmd/tunnel")
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/tunnel: %w\n%s", err, out)
	}
	return bin, nil
}

// waitTimeout bounds every wait for a log event or an exit. It is generous
// because the tests run in parallel on a small machine under -race.
const waitTimeout = 30 * time.Second

// proc is a running tunnel process whose stderr is collected line by line.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited and its output is read

	mu      sync.Mutex
	lines   []string         // every stderr line; guarded by mu
	events  []map[string]any // stderr lines that parsed as JSON objects; guarded by mu
	partial []byte           // an unfinished last line; guarded by mu
	waitErr error            // cmd.Wait's result; set before done is closed
}

// Write collects stderr; the exec package calls it from one goroutine.
func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.partial = append(p.partial, b...)
	for {
		i := bytes.IndexByte(p.partial, '\n')
		if i < 0 {
			break
		}
		p.addLine(string(p.partial[:i]))
		p.partial = p.partial[i+1:]
	}
	return len(b), nil
}

// addLine records one line; p.mu is held.
func (p *proc) addLine(line string) {
	p.lines = append(p.lines, line)
	var ev map[string]any
	if json.Unmarshal([]byte(line), &ev) == nil && ev != nil {
		p.events = append(p.events, ev)
	}
}

// startProc runs the tunnel binary with args. The process is killed when
// the test ends (by t.Context's cancellation, which signals only this
// process); on failure its last 50 log lines are logged.
func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	return startProcEnv(t, nil, args...)
}

// startProcEnv is startProc with extra environment variables ("K=V").
func startProcEnv(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	return startProcBin(t, tunnelBin, env, args...)
}

// startProcBin is startProcEnv running the tunnel binary bin (a build with
// other tags).
func startProcBin(t *testing.T, bin string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: args[0], done: make(chan struct{})}
	p.cmd = exec.CommandContext(t.Context(), bin, args...)
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stderr = p
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start tunnel %s: %v", args[0], err)
	}
	p.name = fmt.Sprintf("%s[%d]", args[0], p.cmd.Process.Pid)
	go func() {
		err := p.cmd.Wait()
		p.mu.Lock()
		if len(p.partial) > 0 {
			p.addLine(string(p.partial))
			p.partial = nil
		}
		p.waitErr = err
		p.mu.Unlock()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			p.cmd.Process.Kill() // our child, by its pid
		}
		<-p.done
		if t.Failed() {
			p.dump(t, 50)
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// dump logs the last n stderr lines of p.
func (p *proc) dump(t *testing.T, n int) {
	t.Helper()
	p.mu.Lock()
	lines := p.lines[max(0, len(p.lines)-n):]
	p.mu.Unlock()
	t.Logf("---- last %d stderr lines of %s ----", len(lines), p.name)
	for _, l := range lines {
		t.Logf("%s: %s", p.name, l)
	}
}

// signal sends sig to the process.
func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v to %s: %v", sig, p.name, err)
	}
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("%s has not exited after %v", p.name, d)
	}
	if p.waitErr == nil {
		return 0
	}
	if ee, ok := errors.AsType[*exec.ExitError](p.waitErr); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			t.Fatalf("%s was killed by %v", p.name, ws.Signal())
		}
		return ee.ExitCode()
	}
	t.Fatalf("%s: %v", p.name, p.waitErr)
	return -1
}

// matcher selects log events.
type matcher func(map[string]any) bool

// isEvent matches events named name whose string fields equal the given
// key/value pairs. An "addr" given without a port matches the host of the
// event's host:port.
func isEvent(name string, kv ...string) matcher {
	return func(ev map[string]any) bool {
		if ev["event"] != name {
			return false
		}
		for i := 0; i+1 < len(kv); i += 2 {
			s, _ := ev[kv[i]].(string)
			if host, _, err := net.SplitHostPort(s); kv[i] == "addr" && err == nil && !strings.Contains(kv[i+1], ":") {
				s = host
			}
			if s != kv[i+1] {
				return false
			}
		}
		return true
	}
}

// matching returns the events logged so far that match.
func (p *proc) matching(match matcher) []map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []map[string]any
	for _, ev := range p.events {
		if match(ev) {
			out = append(out, ev)
		}
	}
	return out
}

// waitEvent polls until an event matches and returns the first one.
func (p *proc) waitEvent(t *testing.T, d time.Duration, what string, match matcher) map[string]any {
	t.Helper()
	return p.waitEventN(t, d, 1, what, match)[0]
}

// waitEventN polls until at least n events match and returns them. It fails
// early if the process exits first.
func (p *proc) waitEventN(t *testing.T, d time.Duration, n int, what string, match matcher) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if evs := p.matching(match); len(evs) >= n {
			return evs
		}
		if p.exited() {
			if evs := p.matching(match); len(evs) >= n {
				return evs
			}
			t.Fatalf("%s exited (%v) before logging %s (want %d)", p.name, p.waitErr, what, n)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %s (want %d) after %v", p.name, what, n, d)
		}
		time.Sleep(10 * time.Millisecond) // poll interval, not synchronisation
	}
}

// addr waits for the server's listener_started line and returns the bound
// address.
func (p *proc) addr(t *testing.T) string {
	t.Helper()
	return listenOf(t, p.waitEvent(t, waitTimeout, "listener_started", isEvent("listener_started", "component", "server")))
}

// adminAddr waits for the admin listener's listener_started line and
// returns the bound address.
func (p *proc) adminAddr(t *testing.T) string {
	t.Helper()
	return listenOf(t, p.waitEvent(t, waitTimeout, "admin listener_started", isEvent("listener_started", "component", "admin")))
}

// forwardAddr waits for the client's listener_started line of route and
// returns the bound local address.
func (p *proc) forwardAddr(t *testing.T, route string) string {
	t.Helper()
	return listenOf(t, p.waitEvent(t, waitTimeout, "listener_started for "+route,
		isEvent("listener_started", "route", route)))
}

func listenOf(t *testing.T, ev map[string]any) string {
	t.Helper()
	s, _ := ev["listen"].(string)
	if _, _, err := net.SplitHostPort(s); err != nil {
		t.Fatalf("listener_started has no usable listen field: %v", ev)
	}
	return s
}

// runTunnel runs a short tunnel command to its end and returns its output
// and exit code.
func runTunnel(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, tunnelBin, args...)
	cmd.WaitDelay = 5 * time.Second
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("tunnel %s did not finish within %v; stderr:\n%s", strings.Join(args, " "), waitTimeout, se.String())
	}
	code = 0
	if err != nil {
		ee, ok := errors.AsType[*exec.ExitError](err)
		if !ok {
			t.Fatalf("tunnel %s: %v", strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
	}
	return so.String(), se.String(), code
}

// mustTunnel runs a tunnel command that must succeed.
func mustTunnel(t *testing.T, args ...string) {
	t.Helper()
	if _, stderr, code := runTunnel(t, args...); code != 0 {
		t.Fatalf("tunnel %s: exit %d\n%s", strings.Join(args, " "), code, stderr)
	}
}

// pki is a throwaway PKI made with `tunnel cert`.
type pki struct {
	dir                   string
	ca                    string // CA certificate file
	serverCert, serverKey string // serverAuth, names localhost and 127.0.0.1
	clientCert, clientKey string // clientAuth, CN app1
}

// pkiDir makes a CA, a server certificate and a client certificate in a
// fresh temporary directory.
func pkiDir(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	mustTunnel(t, "cert", "init", dir)
	p := &pki{dir: dir, ca: filepath.Join(dir, "ca.pem")}
	p.serverCert, p.serverKey = p.issue(t, "--server", "tunnel-srv", "--ip", "127.0.0.1", "--dns", "localhost")
	p.clientCert, p.clientKey = p.issue(t, "--client", "app1")
	return p
}

// issue runs `tunnel cert issue` in p's directory. The first two args must
// be the kind flag and the name; it returns the certificate and key paths.
func (p *pki) issue(t *testing.T, args ...string) (cert, key string) {
	t.Helper()
	mustTunnel(t, append([]string{"cert", "issue", p.dir}, args...)...)
	name := args[1]
	cert, key = filepath.Join(p.dir, name+".pem"), filepath.Join(p.dir, name+"-key.pem")
	for _, f := range []string{cert, key} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("tunnel cert issue %v: %v", args, err)
		}
	}
	return cert, key
}

// readCert parses the first certificate of a PEM file.
func readCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM block", file)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return c
}

// serverArgs are the arguments of a server that allows 127.0.0.1 only and
// serves routes ("NAME=HOST:PORT").
func serverArgs(pk *pki, listen string, routes ...string) []string {
	args := []string{"server", "--listen", listen,
		"--cert", pk.serverCert, "--key", pk.serverKey, "--ca", pk.ca,
		"--allow", "127.0.0.1/32",
		"--log-format", "json", "--log-level", "debug"}
	for _, r := range routes {
		args = append(args, "--route", r)
	}
	return args
}

// clientArgs are the arguments of a client of server with one forward on
// 127.0.0.1:0 per route.
func clientArgs(pk *pki, server string, routes ...string) []string {
	args := []string{"client", "--server", server, "--server-name", "localhost",
		"--cert", pk.clientCert, "--key", pk.clientKey, "--ca", pk.ca,
		"--connect-timeout", "10s",
		"--log-format", "json", "--log-level", "debug"}
	for _, r := range routes {
		args = append(args, "--forward", "127.0.0.1:0="+r)
	}
	return args
}

// tunnelPair starts a server with routes and a client forwarding to each
// route, waits for the client's session and returns both.
func tunnelPair(t *testing.T, pk *pki, routes map[string]string) (srv, cli *proc) {
	t.Helper()
	var rs, names []string
	for name, target := range routes {
		rs = append(rs, name+"="+target)
		names = append(names, name)
	}
	srv = startProc(t, serverArgs(pk, "127.0.0.1:0", rs...)...)
	cli = startProc(t, clientArgs(pk, srv.addr(t), names...)...)
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	return srv, cli
}

// backend is a TCP server on 127.0.0.1:0 that runs handler for each
// connection and closes the connection when handler returns. The listener
// and open connections are closed, and the handlers waited for, when the
// test ends.
func startBackend(t *testing.T, handler func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				handler(c.(*net.TCPConn))
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// echoBackend echoes each connection until EOF, then half-closes.
func echoBackend(t *testing.T) string {
	return startBackend(t, func(c *net.TCPConn) {
		io.Copy(c, c)
		c.CloseWrite()
	})
}

// randReader returns n pseudo-random bytes from seed.
func randReader(seed uint64, n int64) io.Reader {
	var s [32]byte
	s[0], s[1], s[2], s[3] = byte(seed), byte(seed>>8), byte(seed>>16), byte(seed>>24)
	return io.LimitReader(rand.NewChaCha8(s), n)
}

// sendHashed writes n bytes from seed to w and returns their SHA-256.
func sendHashed(w io.Writer, seed uint64, n int64) ([32]byte, int64, error) {
	h := sha256.New()
	written, err := io.Copy(w, io.TeeReader(randReader(seed, n), h))
	return [32]byte(h.Sum(nil)), written, err
}

// recvHashed reads r to EOF and returns the SHA-256 and count of what it got.
func recvHashed(r io.Reader) ([32]byte, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return [32]byte(h.Sum(nil)), n, err
}

// dialLocal connects to a client forward and closes the connection when the
// test ends.
func dialLocal(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial forward %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// assertClosed checks that the peer closes c (EOF or reset) within d,
// without sending more than a few bytes.
func assertClosed(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	n, err := io.Copy(io.Discard, c)
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		t.Fatalf("local connection still open after %v (read %d bytes)", d, n)
	}
	if n != 0 {
		t.Errorf("read %d bytes from a refused connection, want 0", n)
	}
}

// scanLines splits s into non-empty lines.
func scanLines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// withFlag returns a copy of args with the value after the first flag
// replaced, or flag and value appended if flag is absent.
func withFlag(args []string, flag, value string) []string {
	out := append([]string(nil), args...)
	for i := 0; i+1 < len(out); i++ {
		if out[i] == flag {
			out[i+1] = value
			return out
		}
	}
	return append(out, flag, value)
}

// withoutFlag returns a copy of args without any occurrence of flag and its
// value.
func withoutFlag(args []string, flag string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		if args[i] == flag {
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}

// echoCheck sends n random bytes through the forward at addr to an echo
// backend, half-closes, and checks that the same bytes come back.
func echoCheck(t *testing.T, addr string, seed uint64, n int64) {
	t.Helper()
	c := dialLocal(t, addr)
	c.SetDeadline(time.Now().Add(waitTimeout))
	var (
		sent [32]byte
		werr error
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		sent, _, werr = sendHashed(c, seed, n)
		c.CloseWrite()
	})
	got, m, rerr := recvHashed(c)
	wg.Wait()
	if werr != nil || rerr != nil {
		t.Fatalf("echo through %s: write error %v, read error %v", addr, werr, rerr)
	}
	if m != n || got != sent {
		t.Fatalf("echo through %s: got %d bytes (sha256 %x), want %d (sha256 %x)", addr, m, got[:8], n, sent[:8])
	}
	c.Close()
}
