// Package spiretest runs a real SPIRE server and agent for tests: loopback
// and unix sockets in a temporary directory, the join-token node attestor
// and the unix workload attestor. Binaries come from scripts/spire/build.sh.
package spiretest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Version is the SPIRE release the tests run, built by scripts/spire/build.sh.
const Version = "1.13.3"

// startTimeout bounds how long a server or agent may take to become healthy
// on a loaded 2-core machine.
const startTimeout = 60 * time.Second

// Dir returns the directory holding spire-server and spire-agent:
// $TUNNEL_SPIRE_DIR, or $HOME/.cache/tunnel-spire/v1.13.3.
func Dir() string {
	if d := os.Getenv("TUNNEL_SPIRE_DIR"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "tunnel-spire", "v"+Version)
}

// Require returns the paths of spire-server and spire-agent. If either is
// missing it skips the test, loudly, when CI is unset, and fails it under CI,
// where .ci/run builds them first.
func Require(t testing.TB) (server, agent string) {
	t.Helper()
	server, agent = filepath.Join(Dir(), "spire-server"), filepath.Join(Dir(), "spire-agent")
	for _, p := range []string{server, agent} {
		if _, err := os.Stat(p); err != nil {
			msg := fmt.Sprintf("SPIRE binary missing (%v): run scripts/spire/build.sh (about 9 minutes cold)", err)
			if ci := os.Getenv("CI"); ci != "" && ci != "false" {
				t.Fatal(msg)
			}
			t.Skip("!!! SKIPPING: " + msg)
		}
	}
	return server, agent
}

// Server is a running spire-server with its own trust domain.
type Server struct {
	TrustDomain string
	Bin         string
	Dir         string
	Socket      string // the server API socket
	Port        int    // the agent API on 127.0.0.1
	cmd         *exec.Cmd
}

// Agent is a running spire-agent attested to a Server by a join token.
type Agent struct {
	Server *Server
	ID     string // the agent's SPIFFE ID
	Socket string // the Workload API socket
	Addr   string // Socket as a Workload API address: unix://...
	cmd    *exec.Cmd
}

// shortDir makes a temporary directory with a short path (unix socket
// paths are limited to 108 bytes) and removes it when the test ends.
func shortDir(t testing.TB, prefix string) string {
	t.Helper()
	d, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// freePort returns a loopback TCP port that was free a moment ago: SPIRE
// takes its bind port from its config file, not from the kernel.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// StartServer starts a SPIRE server for trustDomain (a self-signed CA with
// an in-memory key, SQLite data store, join-token node attestation) and
// waits until its health check passes. It is stopped when the test ends.
func StartServer(t testing.TB, trustDomain string) *Server {
	t.Helper()
	bin, _ := Require(t)
	dir := shortDir(t, "spire-srv")
	s := &Server{TrustDomain: trustDomain, Bin: bin, Dir: dir, Socket: filepath.Join(dir, "api.sock")}
	conf := filepath.Join(dir, "server.conf")
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		s.Port = freePort(t)
		if err = os.WriteFile(conf, []byte(fmt.Sprintf(serverConf, s.Port, s.Socket, trustDomain, dir, dir)), 0o600); err != nil {
			t.Fatal(err)
		}
		s.cmd = start(t, dir, "server", bin, "run", "-config", conf)
		if err = waitHealthy(t, s.cmd, bin, "-socketPath", s.Socket); err == nil {
			return s
		}
		stop(s.cmd) // the port may have been taken in between: try another
	}
	t.Fatalf("spire-server did not become healthy: %v\n%s", err, tail(filepath.Join(dir, "server.log")))
	return nil
}

const serverConf = `server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = "%s"
  trust_domain = "%s"
  data_dir = "%s/data"
  log_level = "INFO"
  ca_ttl = "24h"
  default_x509_svid_ttl = "1h"
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = "%s/data/datastore.sqlite3"
    }
  }
  KeyManager "memory" {
    plugin_data {}
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
}
`

// Run runs a spire-server subcommand against s (its API socket appended)
// and returns its combined output.
func (s *Server) Run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args = append(args, "-socketPath", s.Socket)
	out, err := exec.CommandContext(ctx, s.Bin, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("spire-server %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// MustRun is Run that fails the test on error.
func (s *Server) MustRun(t testing.TB, args ...string) string {
	t.Helper()
	out, err := s.Run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ID returns the SPIFFE ID spiffe://TRUSTDOMAIN/path.
func (s *Server) ID(path string) string {
	return "spiffe://" + s.TrustDomain + "/" + strings.TrimPrefix(path, "/")
}

var (
	entryIDRe = regexp.MustCompile(`(?m)^Entry ID\s*:\s*(\S+)`)
	tokenRe   = regexp.MustCompile(`(?m)^Token: (\S+)`)
)

// Entry describes a workload registration entry.
type Entry struct {
	SPIFFEID      string   // required
	Parent        string   // default: the agent's ID
	Selectors     []string // default: unix:uid:<this process's uid>
	TTL           time.Duration
	DNSNames      []string
	FederatesWith []string // trust domains, as spiffe://TD
}

// CreateEntry registers e under agent a and returns the entry ID.
func (s *Server) CreateEntry(t testing.TB, a *Agent, e Entry) string {
	t.Helper()
	args := append([]string{"entry", "create"}, entryArgs(a, e)...)
	out := s.MustRun(t, args...)
	m := entryIDRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("spire-server entry create: no entry ID in %q", out)
	}
	return m[1]
}

// entryArgs are the entry create/update flags of e.
func entryArgs(a *Agent, e Entry) []string {
	parent := e.Parent
	if parent == "" {
		parent = a.ID
	}
	args := []string{"-parentID", parent, "-spiffeID", e.SPIFFEID}
	sels := e.Selectors
	if len(sels) == 0 {
		sels = []string{"unix:uid:" + strconv.Itoa(os.Getuid())}
	}
	for _, sel := range sels {
		args = append(args, "-selector", sel)
	}
	if e.TTL > 0 {
		args = append(args, "-x509SVIDTTL", strconv.Itoa(int(e.TTL/time.Second)))
	}
	for _, d := range e.DNSNames {
		args = append(args, "-dns", d)
	}
	for _, f := range e.FederatesWith {
		args = append(args, "-federatesWith", f)
	}
	return args
}

// UpdateEntry replaces the entry id with e (under agent a).
func (s *Server) UpdateEntry(t testing.TB, a *Agent, id string, e Entry) {
	t.Helper()
	args := append([]string{"entry", "update", "-entryID", id}, entryArgs(a, e)...)
	s.MustRun(t, args...)
}

// DeleteEntry deletes a registration entry.
func (s *Server) DeleteEntry(t testing.TB, id string) {
	t.Helper()
	s.MustRun(t, "entry", "delete", "-entryID", id)
}

// Bundle returns the server's trust bundle in SPIFFE (JWKS) format, as
// another trust domain takes it in to federate.
func (s *Server) Bundle(t testing.TB) []byte {
	t.Helper()
	return []byte(s.MustRun(t, "bundle", "show", "-format", "spiffe"))
}

// SetFederatedBundle makes s hold other's bundle, so entries that federate
// with other's trust domain deliver it to their workloads.
func (s *Server) SetFederatedBundle(t testing.TB, other *Server) {
	t.Helper()
	p := filepath.Join(s.Dir, "federated-"+other.TrustDomain+".json")
	if err := os.WriteFile(p, other.Bundle(t), 0o600); err != nil {
		t.Fatal(err)
	}
	s.MustRun(t, "bundle", "set", "-format", "spiffe", "-id", "spiffe://"+other.TrustDomain, "-path", p)
}

// DeleteFederatedBundle removes the bundle of trust domain td from s, and
// the entries' federation with it.
func (s *Server) DeleteFederatedBundle(t testing.TB, td string) {
	t.Helper()
	s.MustRun(t, "bundle", "delete", "-id", "spiffe://"+td, "-mode", "dissociate")
}

// StartAgent starts a spire-agent attested to s with a fresh join token
// (its ID is spiffe://TD/spire/agent/join_token/TOKEN), serving the Workload
// API on a unix socket, and waits until it is healthy.
func StartAgent(t testing.TB, s *Server) *Agent {
	t.Helper()
	_, bin := Require(t)
	dir := shortDir(t, "spire-agt")
	out := s.MustRun(t, "token", "generate", "-ttl", "600")
	m := tokenRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("spire-server token generate: no token in %q", out)
	}
	token := m[1]
	a := &Agent{Server: s, ID: s.ID("spire/agent/join_token/" + token), Socket: filepath.Join(dir, "agent.sock")}
	a.Addr = "unix://" + a.Socket
	conf := filepath.Join(dir, "agent.conf")
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(agentConf, dir, s.Port, a.Socket, s.TrustDomain)), 0o600); err != nil {
		t.Fatal(err)
	}
	a.cmd = start(t, dir, "agent", bin, "run", "-config", conf, "-joinToken", token)
	if err := waitHealthy(t, a.cmd, bin, "-socketPath", a.Socket); err != nil {
		t.Fatalf("spire-agent did not become healthy: %v\n%s", err, tail(filepath.Join(dir, "agent.log")))
	}
	return a
}

const agentConf = `agent {
  data_dir = "%[1]s/data"
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "%[2]d"
  socket_path = "%[3]s"
  trust_domain = "%[4]s"
  insecure_bootstrap = true
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  # On disk, so a restarted agent re-attests with the SVID it stored.
  KeyManager "disk" {
    plugin_data {
      directory = "%[1]s/keys"
    }
  }
  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
`

// Stop stops the agent now (its Workload API becomes unreachable); the test
// cleanup would otherwise.
func (a *Agent) Stop() { stop(a.cmd) }

// Restart starts the agent again on the same socket and data directory
// (it re-attests with the SVID it stored) and waits until it is healthy.
func (a *Agent) Restart(t testing.TB) {
	t.Helper()
	stop(a.cmd)
	dir := filepath.Dir(a.Socket)
	a.cmd = start(t, dir, "agent", a.cmd.Path, a.cmd.Args[1:]...)
	if err := waitHealthy(t, a.cmd, a.cmd.Path, "-socketPath", a.Socket); err != nil {
		t.Fatalf("spire-agent did not come back: %v\n%s", err, tail(filepath.Join(dir, "agent.log")))
	}
}

// Log returns the end of the agent's log, for test failure messages.
func (a *Agent) Log() string { return tail(filepath.Join(filepath.Dir(a.Socket), "agent.log")) }

// Log returns the end of the server's log.
func (s *Server) Log() string { return tail(filepath.Join(s.Dir, "server.log")) }

// start runs bin with its output appended to dir/name.log, stopped (by its
// PID) when the test ends.
func start(t testing.TB, dir, name, bin string, args ...string) *exec.Cmd {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	waitsMu.Lock()
	waits[cmd] = done
	waitsMu.Unlock()
	t.Cleanup(func() { stop(cmd) })
	return cmd
}

// waits maps each started command to a channel closed when it has exited.
var (
	waitsMu sync.Mutex
	waits   = map[*exec.Cmd]chan struct{}{} // guarded by waitsMu
)

func exited(cmd *exec.Cmd) chan struct{} {
	waitsMu.Lock()
	defer waitsMu.Unlock()
	return waits[cmd]
}

// stop ends cmd (SIGTERM, then SIGKILL after 5 s) and waits for it.
func stop(cmd *exec.Cmd) {
	done := exited(cmd)
	if done == nil || cmd.Process == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// waitHealthy runs `bin healthcheck args` until it passes, the process
// exits, or startTimeout passes.
func waitHealthy(t testing.TB, cmd *exec.Cmd, bin string, args ...string) error {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-exited(cmd):
			return errors.New("exited during start-up")
		default:
		}
		out, err := exec.Command(bin, append([]string{"healthcheck"}, args...)...).CombinedOutput()
		if err == nil {
			return nil
		}
		last = fmt.Errorf("%w: %s", err, bytes.TrimSpace(out))
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("not healthy within %s: %v", startTimeout, last)
}

// tail returns the last 40 lines of the file at path.
func tail(path string) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return path + ":\n" + strings.Join(lines, "\n")
}
