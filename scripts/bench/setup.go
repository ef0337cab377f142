package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tunnel-dev/tunnel/internal/devpki"
)

// serverName is the name on the server certificate both tunnel and stunnel
// clients check.
const serverName = "tunnel.bench"

// world is what every scenario shares: the binaries, the PKI and the
// backends.
type world struct {
	dir     string // scratch directory
	tunnel  string // binary
	load    string // binary
	stunnel string // binary; "" if absent
	pki     string
	sink    string // backend addresses
	echo    string
	profile string   // --profile directory, or ""
	env     []string // --tunnel-env

	backends *proc
}

// build compiles the tunnel and the load tool into dir.
func build(ctx context.Context, dir string) (tunnel, load string, err error) {
	tunnel, load = filepath.Join(dir, "tunnel"), filepath.Join(dir, "tunnel-load")
	for bin, pkg := range map[string]string{tunnel: "./cmd/tunnel", load: "./cmd/tunnel-load"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg)
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
		}
	}
	return tunnel, load, nil
}

// makePKI writes a CA, a server certificate for serverName and 127.0.0.1,
// and a client certificate "bench" into dir.
func makePKI(dir string) error {
	if _, err := devpki.Init(dir, devpki.Options{}); err != nil {
		return err
	}
	if _, err := devpki.IssueServer(dir, serverName, nil, []net.IP{net.IPv4(127, 0, 0, 1)}, devpki.Options{}); err != nil {
		return err
	}
	_, err := devpki.IssueClient(dir, "bench", devpki.Options{})
	return err
}

func (w *world) file(name string) string { return filepath.Join(w.pki, name) }

// findStunnel returns the stunnel binary, or "" if there is none.
func findStunnel() string {
	for _, name := range []string{"stunnel4", "stunnel"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// startBackends starts the sink and echo servers.
func (w *world) startBackends() error {
	p, err := startProc("backends", w.load, nil, "serve")
	if err != nil {
		return err
	}
	m, err := p.waitLine(10*time.Second, "backend addresses", func(m map[string]any, _ string) bool { return m != nil && m["sink"] != nil })
	if err != nil {
		p.stop()
		return err
	}
	w.backends, w.sink, w.echo = p, fmt.Sprint(m["sink"]), fmt.Sprint(m["echo"])
	return nil
}

// pair is a running tunnel server and client; sink and echo are the
// client's forward addresses.
type pair struct {
	server, client *proc
	serverAddr     string
	sink, echo     string
}

func (p *pair) stop() {
	if p.client != nil {
		p.client.stop()
	}
	if p.server != nil {
		p.server.stop()
	}
}

// profileEnv is the environment of one tunnel process: --tunnel-env, and
// its profile files under --profile.
func (w *world) profileEnv(tag string) []string {
	if w.profile == "" {
		return w.env
	}
	return append(slices.Clone(w.env),
		"TUNNEL_CPUPROFILE="+filepath.Join(w.profile, tag+".cpu.pprof"),
		"TUNNEL_MEMPROFILE="+filepath.Join(w.profile, tag+".mem.pprof"),
	)
}

// startServer starts a tunnel server with routes to the backends, with its
// defaults except for extra flags.
func (w *world) startServer(tag string, extra ...string) (*proc, string, error) {
	args := append([]string{"server", "--listen", "127.0.0.1:0",
		"--cert", w.file(serverName + ".pem"), "--key", w.file(serverName + "-key.pem"), "--ca", w.file("ca.pem"),
		"--allow", "127.0.0.0/8", "--route", "sink=" + w.sink, "--route", "echo=" + w.echo,
		"--log-format", "json", "--shutdown-timeout", "1s"}, extra...)
	s, err := startProc("tunnel server", w.tunnel, w.profileEnv(tag+"-server"), args...)
	if err != nil {
		return nil, "", err
	}
	ev, err := s.event(10*time.Second, "listener_started")
	if err != nil {
		s.stop()
		return nil, "", err
	}
	return s, fmt.Sprint(ev["listen"]), nil
}

// startPair starts a tunnel server and a client, forwarding a local port to
// each route.
func (w *world) startPair(tag string, serverFlags ...string) (*pair, error) {
	srv, addr, err := w.startServer(tag, serverFlags...)
	if err != nil {
		return nil, err
	}
	p, err := w.startClient(tag, addr)
	if err != nil {
		srv.stop()
		return nil, err
	}
	p.server, p.serverAddr = srv, addr
	return p, nil
}

// startClient starts a tunnel client whose session goes to addr, forwarding
// a local port to each route, and waits for its session. The pair it
// returns has no server.
func (w *world) startClient(tag, addr string, extra ...string) (*pair, error) {
	args := append([]string{"client",
		"--server", addr, "--server-name", serverName,
		"--cert", w.file("bench.pem"), "--key", w.file("bench-key.pem"), "--ca", w.file("ca.pem"),
		"--forward", "127.0.0.1:0=sink", "--forward", "127.0.0.1:0=echo", "--log-format", "json"}, extra...)
	c, err := startProc("tunnel client", w.tunnel, w.profileEnv(tag+"-client"), args...)
	if err != nil {
		return nil, err
	}
	p := &pair{client: c}
	for route, dst := range map[string]*string{"sink": &p.sink, "echo": &p.echo} {
		ev, err := c.event(10*time.Second, "listener_started", "route", route)
		if err != nil {
			c.stop()
			return nil, err
		}
		*dst = fmt.Sprint(ev["listen"])
	}
	if slices.Contains(extra, "--raw") {
		return p, nil // a raw client has no session: one TLS connection per local connection
	}
	if _, err := c.event(10*time.Second, "session_opened"); err != nil {
		c.stop()
		return nil, err
	}
	return p, nil
}

// stunnels is a stunnel server and client configured like the tunnel:
// TLS 1.3, the same certificates, the client's certificate required and
// verified, the server's chain and name checked by the client, TCP_NODELAY
// on every socket as Go sets it. sink and echo are the client's accept
// addresses, serverEcho the server's TLS port in front of the echo backend.
type stunnels struct {
	server, client *proc
	sink, echo     string
	serverEcho     string
}

func (s *stunnels) stop() {
	if s.client != nil {
		s.client.stop()
	}
	if s.server != nil {
		s.server.stop()
	}
}

// freePorts returns n loopback addresses whose ports were free a moment ago.
func freePorts(n int) ([]string, error) {
	var addrs []string
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, nil
}

func (w *world) startStunnel(tag string) (*stunnels, error) {
	if w.stunnel == "" {
		return nil, errors.New("stunnel is not installed")
	}
	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	common := "foreground = yes\npid =\nsyslog = no\n" +
		"socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n"
	tlsOpts := "sslVersionMin = TLSv1.3\nCAfile = " + w.file("ca.pem") + "\nverifyChain = yes\n"
	var srv, cli strings.Builder
	srv.WriteString(common)
	cli.WriteString(common)
	for i, svc := range []struct{ name, backend string }{{"sink", w.sink}, {"echo", w.echo}} {
		fmt.Fprintf(&srv, "[%s]\naccept = %s\nconnect = %s\ncert = %s\nkey = %s\n%srequireCert = yes\n",
			svc.name, ports[i], svc.backend, w.file(serverName+".pem"), w.file(serverName+"-key.pem"), tlsOpts)
		fmt.Fprintf(&cli, "[%s]\nclient = yes\naccept = %s\nconnect = %s\ncert = %s\nkey = %s\n%scheckHost = %s\n",
			svc.name, ports[2+i], ports[i], w.file("bench.pem"), w.file("bench-key.pem"), tlsOpts, serverName)
	}
	st := &stunnels{sink: ports[2], echo: ports[3], serverEcho: ports[1]}
	for _, c := range []struct {
		role string
		conf string
		dst  **proc
	}{{"server", srv.String(), &st.server}, {"client", cli.String(), &st.client}} {
		file := filepath.Join(w.dir, tag+"-stunnel-"+c.role+".conf")
		if err := os.WriteFile(file, []byte(c.conf), 0o600); err != nil {
			st.stop()
			return nil, err
		}
		p, err := startProc("stunnel "+c.role, w.stunnel, nil, file)
		if err != nil {
			st.stop()
			return nil, err
		}
		*c.dst = p
		if _, err := p.waitLine(10*time.Second, "Configuration successful", func(_ map[string]any, l string) bool {
			return strings.Contains(l, "Configuration successful")
		}); err != nil {
			st.stop()
			return nil, err
		}
	}
	return st, nil
}

// startDelay starts a WAN-like proxy to `to`.
func (w *world) startDelay(to string, rtt time.Duration, rate int64) (*proc, string, error) {
	p, err := startProc("delay proxy", w.load, nil, "delay", "--to", to, "--rtt", rtt.String(), "--rate", fmt.Sprint(rate))
	if err != nil {
		return nil, "", err
	}
	m, err := p.waitLine(10*time.Second, "proxy address", func(m map[string]any, _ string) bool { return m != nil && m["listen"] != nil })
	if err != nil {
		p.stop()
		return nil, "", err
	}
	return p, fmt.Sprint(m["listen"]), nil
}
