package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/devpki"
)

func demoCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "run a server, a client and an echo backend on loopback, move data through them, and stay up",
		Description: `Example:
   tunnel demo                 # until Ctrl-C
   tunnel demo --duration 10s  # CI-friendly

   It makes a throwaway PKI in a temporary directory, starts a server and a
   client as child processes of this binary on free loopback ports, sends
   data through the tunnel to an echo backend, prints the figures, and
   removes everything when it ends.`,
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "duration", Usage: "stop after this long (0: until Ctrl-C)"},
			&cli.IntFlag{Name: "mib", Value: 64, Usage: "MiB to send through the tunnel and back"},
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.Int("mib") < 1 {
				return flagError("--mib", "%d is not a positive number", c.Int("mib"))
			}
			if c.Duration("duration") < 0 {
				return flagError("--duration", "%v is negative", c.Duration("duration"))
			}
			return runDemo(c.Context, stdout, c.Duration("duration"), c.Int("mib"))
		},
	}
}

func runDemo(ctx context.Context, out io.Writer, duration time.Duration, mib int) (err error) {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("demo: finding own binary: %w", err)
	}
	dir, err := os.MkdirTemp("", "tunnel-demo-")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer os.RemoveAll(dir)
	pki := filepath.Join(dir, "pki")
	if _, err := devpki.Init(pki, devpki.Options{}); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if _, err := devpki.IssueServer(pki, "tunnel.demo", []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}, devpki.Options{}); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if _, err := devpki.IssueClient(pki, "demo-client", devpki.Options{}); err != nil {
		return fmt.Errorf("demo: %w", err)
	}

	echoLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo: echo backend: %w", err)
	}
	var echoWG sync.WaitGroup
	defer echoWG.Wait()
	defer echoLn.Close()
	echoWG.Go(func() { serveEcho(echoLn, &echoWG) })

	p := func(name string) string { return filepath.Join(pki, name) }
	srv, err := startChild(self, "server", "server", "--listen", "127.0.0.1:0",
		"--cert", p("tunnel.demo.pem"), "--key", p("tunnel.demo-key.pem"), "--ca", p("ca.pem"),
		"--allow", "127.0.0.1/32", "--allow", "::1/128",
		"--route", "echo="+echoLn.Addr().String(), "--shutdown-timeout", "2s")
	if err != nil {
		return err
	}
	defer srv.stop()
	srvAddr, err := srv.waitEvent(audit.ListenerStarted, audit.Listen, 10*time.Second)
	if err != nil {
		return err
	}
	cl, err := startChild(self, "client", "client", "--server", srvAddr, "--server-name", "tunnel.demo",
		"--cert", p("demo-client.pem"), "--key", p("demo-client-key.pem"), "--ca", p("ca.pem"),
		"--forward", "127.0.0.1:0=echo")
	if err != nil {
		return err
	}
	defer cl.stop()
	fwdAddr, err := cl.waitEvent(audit.ListenerStarted, audit.Listen, 10*time.Second)
	if err != nil {
		return err
	}
	tlsVersion, err := cl.waitEvent(audit.SessionOpened, "tls_version", 10*time.Second)
	if err != nil {
		return err
	}

	fmt.Fprintf(out, `tunnel demo: a server and a client, mutual TLS, on loopback
  PKI      %s  (throwaway CA, server cert "tunnel.demo", client cert "demo-client")
  backend  echo server on %s
  server   pid %d, listening on %s, route "echo" -> %s, allowlist 127.0.0.1/32 ::1/128
  client   pid %d, forwarding %s -> route "echo"

A byte's path:
  you -> %s (client) -> %s + yamux stream "echo" -> %s (server) -> %s (echo) -> back the same way

`, pki, echoLn.Addr(), srv.cmd.Process.Pid, srvAddr, echoLn.Addr(), cl.cmd.Process.Pid, fwdAddr,
		fwdAddr, tlsVersion, srvAddr, echoLn.Addr())

	n := int64(mib) << 20
	elapsed, err := echoThrough(ctx, fwdAddr, n)
	if err != nil {
		srv.dumpTail(out)
		cl.dumpTail(out)
		return fmt.Errorf("demo: transfer through the tunnel: %w", err)
	}
	mbps := float64(n) / 1e6 / elapsed.Seconds()
	fmt.Fprintf(out, "Sent %d MiB through the tunnel and back in %.2f s: %.0f MB/s each way, SHA-256 equal.\n\n", mib, elapsed.Seconds(), mbps)
	host, port, _ := net.SplitHostPort(fwdAddr)
	if duration > 0 {
		fmt.Fprintf(out, "Try it: nc %s %s   (type a line; it comes back). Stopping in %v.\n", host, port, duration)
	} else {
		fmt.Fprintf(out, "Try it: nc %s %s   (type a line; it comes back). Ctrl-C to stop.\n", host, port)
	}
	var timeout <-chan time.Time
	if duration > 0 {
		timeout = time.After(duration)
	}
	select {
	case <-ctx.Done():
	case <-timeout:
	case <-srv.exited:
		return fmt.Errorf("demo: the server exited early")
	case <-cl.exited:
		return fmt.Errorf("demo: the client exited early")
	}
	fmt.Fprintln(out, "stopping: client, server, backend; removing", dir)
	return nil
}

// echoThrough sends n random bytes to addr while reading the echo back, and
// checks the SHA-256 of both.
func echoThrough(ctx context.Context, addr string, n int64) (time.Duration, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	start := time.Now()
	sent := sha256.New()
	werr := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, io.TeeReader(io.LimitReader(rand.Reader, n), sent))
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got := sha256.New()
	m, err := io.Copy(got, c)
	if err := <-werr; err != nil {
		return 0, err
	}
	if err != nil {
		return 0, err
	}
	if m != n || !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		return 0, fmt.Errorf("echo mismatch: sent %d bytes, got %d", n, m)
	}
	return time.Since(start), nil
}

func serveEcho(ln net.Listener, wg *sync.WaitGroup) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Go(func() {
			defer c.Close()
			io.Copy(c, c)
			c.(*net.TCPConn).CloseWrite()
		})
	}
}

// child is a tunnel process the demo started; its JSON log lines are kept.
type child struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}

	mu    sync.Mutex
	lines []map[string]any // guarded by mu
	raw   []string         // the last lines as text, for a failure report; guarded by mu
}

func startChild(self, name string, args ...string) (*child, error) {
	args = append(args, "--log-format", "json")
	cmd := exec.Command(self, args...)
	cmd.SysProcAttr = childProcAttr() // where it can, the kernel stops the child if the demo dies
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("demo: starting %s: %w", name, err)
	}
	ch := &child{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			_ = json.Unmarshal(sc.Bytes(), &m)
			ch.mu.Lock()
			ch.lines = append(ch.lines, m)
			ch.raw = append(ch.raw, sc.Text())
			if len(ch.raw) > 50 {
				ch.raw = ch.raw[1:]
			}
			ch.mu.Unlock()
		}
		cmd.Wait()
		close(ch.exited)
	}()
	return ch, nil
}

// waitEvent waits for the first log line with the event and returns its
// field as a string.
func (c *child) waitEvent(event, field string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for seen := 0; ; {
		c.mu.Lock()
		lines := c.lines[seen:]
		seen = len(c.lines)
		c.mu.Unlock()
		for _, m := range lines {
			if m[audit.Event] == event {
				return fmt.Sprint(m[field]), nil
			}
		}
		select {
		case <-c.exited:
			return "", fmt.Errorf("demo: %s exited before %s:\n  %s", c.name, event, strings.Join(c.tail(), "\n  "))
		case <-time.After(20 * time.Millisecond): // poll interval
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("demo: %s: no %s within %v:\n  %s", c.name, event, timeout, strings.Join(c.tail(), "\n  "))
		}
	}
}

func (c *child) tail() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.raw...)
}

func (c *child) dumpTail(w io.Writer) {
	fmt.Fprintf(w, "last log lines of the %s:\n  %s\n", c.name, strings.Join(c.tail(), "\n  "))
}

// stop sends SIGTERM, waits up to 5 s, then kills. Where there is no
// SIGTERM (Windows), it kills at once.
func (c *child) stop() {
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		_ = c.cmd.Process.Kill()
	}
	select {
	case <-c.exited:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}
