package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"

	"github.com/tunnel-dev/tunnel/admin"
	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/reload"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/server"
	"github.com/tunnel-dev/tunnel/trust"
)

func tlsFlags(caUsage string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "cert", EnvVars: []string{"TUNNEL_CERT"}, Usage: "certificate `FILE` (PEM, leaf first, chain may follow)"},
		&cli.StringFlag{Name: "key", EnvVars: []string{"TUNNEL_KEY"}, Usage: "private key `FILE` (PEM)"},
		&cli.StringFlag{Name: "ca", EnvVars: []string{"TUNNEL_CA"}, Usage: caUsage},
	}
}

func serverCommand(stderr io.Writer) *cli.Command {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "listen", Value: "127.0.0.1:8443", EnvVars: []string{"TUNNEL_LISTEN"}, Usage: "`ADDR` to accept clients on (IPv4 or [IPv6]:port)"},
		&cli.StringSliceFlag{Name: "allow", EnvVars: []string{"TUNNEL_ALLOW"}, Usage: "client address `CIDR` or bare IP that may connect (repeatable; required; 0.0.0.0/0 and ::/0 allow all)"},
		&cli.StringSliceFlag{Name: "route", EnvVars: []string{"TUNNEL_ROUTE"}, Usage: "backend `NAME=HOST:PORT` or NAME=unix:/PATH, then options: ,proxy-v2 (or ,proxy-v1) sends the backend a PROXY v2 (v1) header (repeatable)"},
		&cli.StringFlag{Name: "raw-route", EnvVars: []string{"TUNNEL_RAW_ROUTE"}, Usage: "route `NAME` for plain TLS clients that offer no ALPN (stunnel, openssl s_client); without it they are refused"},
		&cli.StringSliceFlag{Name: "proxy-protocol-from", EnvVars: []string{"TUNNEL_PROXY_PROTOCOL_FROM"}, Usage: "load balancer `CIDR` whose connections must start with a PROXY v1/v2 header naming the client (repeatable)"},
		&cli.DurationFlag{Name: "proxy-header-timeout", Value: netfilter.DefaultProxyHeaderTimeout, EnvVars: []string{"TUNNEL_PROXY_HEADER_TIMEOUT"}, Usage: "how long a --proxy-protocol-from upstream may take to send its PROXY header"},
		&cli.DurationFlag{Name: "first-byte-timeout", Value: server.DefaultFirstByteTimeout, EnvVars: []string{"TUNNEL_FIRST_BYTE_TIMEOUT"}, Usage: "how long a new connection may stay silent before it is reset; it holds no handshake slot meanwhile"},
		&cli.DurationFlag{Name: "client-hello-timeout", Value: server.DefaultClientHelloTimeout, EnvVars: []string{"TUNNEL_CLIENT_HELLO_TIMEOUT"}, Usage: "how long the rest of a ClientHello may take after its first byte; it holds no handshake slot meanwhile"},
		&cli.IntFlag{Name: "max-pending", Value: server.DefaultMaxPending, EnvVars: []string{"TUNNEL_MAX_PENDING"}, Usage: "connections waiting for their ClientHello; when full, the oldest silent one is reset to make room"},
		&cli.DurationFlag{Name: "handshake-timeout", Value: server.DefaultHandshakeTimeout, EnvVars: []string{"TUNNEL_HANDSHAKE_TIMEOUT"}, Usage: "limit on one TLS handshake, from the complete ClientHello on"},
		&cli.IntFlag{Name: "max-handshakes", Value: server.DefaultMaxHandshakes(), EnvVars: []string{"TUNNEL_MAX_HANDSHAKES"}, Usage: "TLS handshakes in flight, each counted from its complete ClientHello; when all are taken the oldest one waiting on its peer is reset to make room (default 128 x GOMAXPROCS)"},
		&cli.DurationFlag{Name: "dial-timeout", Value: server.DefaultDialTimeout, EnvVars: []string{"TUNNEL_DIAL_TIMEOUT"}, Usage: "limit on one backend dial"},
		&cli.DurationFlag{Name: "idle-timeout", EnvVars: []string{"TUNNEL_IDLE_TIMEOUT"}, Usage: "close a stream idle this long both ways (0: never)"},
		&cli.DurationFlag{Name: "shutdown-timeout", Value: server.DefaultShutdownTimeout, EnvVars: []string{"TUNNEL_SHUTDOWN_TIMEOUT"}, Usage: "on SIGINT/SIGTERM, how long open streams may finish"},
		&cli.IntFlag{Name: "max-streams", Value: server.DefaultMaxStreamsPerSession, EnvVars: []string{"TUNNEL_MAX_STREAMS"}, Usage: "concurrent streams per client session"},
		&cli.IntFlag{Name: "max-conns-per-addr", Value: netfilter.DefaultMaxConnsPerAddr, EnvVars: []string{"TUNNEL_MAX_CONNS_PER_ADDR"}, Usage: "connections one client address may hold at once, handshakes included; more are reset (0: no cap)"},
		&cli.IntFlag{Name: "max-sessions-per-identity", Value: server.DefaultMaxSessionsPerIdentity, EnvVars: []string{"TUNNEL_MAX_SESSIONS_PER_IDENTITY"}, Usage: "tunnel sessions one client certificate may hold at once"},
		&cli.IntFlag{Name: "max-stream-rate", EnvVars: []string{"TUNNEL_MAX_STREAM_RATE"}, Usage: "stream opens per second per session, burst --max-streams; more get status \"over a limit\" (0: no rate limit; the stream cap and memory budgets bound a session)"},
		&cli.StringFlag{Name: "session-memory", Value: "64MiB", EnvVars: []string{"TUNNEL_SESSION_MEMORY"}, Usage: "`SIZE` of stream data one session may hold unread (KiB, MiB, GiB); a stream past it is reset, new ones refused when it is 3/4 full"},
		&cli.StringFlag{Name: "memory-budget", Value: "256MiB", EnvVars: []string{"TUNNEL_MEMORY_BUDGET"}, Usage: "`SIZE` of stream data all sessions together may hold unread"},
		&cli.DurationFlag{Name: "max-session-lifetime", EnvVars: []string{"TUNNEL_MAX_SESSION_LIFETIME"}, Usage: "end a session gracefully after this long, so rotated certificates take over (0: never)"},
	}
	flags = append(flags, tlsFlags("client CA bundle `FILE`: client certificates must chain to it")...)
	flags = append(flags, revocationFlags()...)
	flags = append(flags, adminFlags()...)
	flags = append(flags, logFlags()...)
	flags = append(flags, configFileFlag())
	flags = append(flags, reloadFlags()...)
	return &cli.Command{
		Name:  "server",
		Usage: "accept mutual-TLS clients and carry their streams to named backends",
		Description: `Example:
   tunnel server --listen 0.0.0.0:8443 \
     --cert pki/tunnel.example.com.pem --key pki/tunnel.example.com-key.pem --ca pki/ca.pem \
     --allow 10.0.0.0/8 --allow ::1 --route db=127.0.0.1:5432 --route pg=unix:/run/postgresql/.s.PGSQL.5432

   Repeatable flags also take several values separated by commas or spaces
   (--route: spaces only). Exit status: 0 after a clean shutdown, 1 on a
   runtime failure, 2 on a configuration error.

   --config server.yaml reads every setting from a YAML file (docs/CONFIG.md);
   flags and TUNNEL_* variables override it. The certificate, key, CA, CRL
   files and the config file are watched: a change (or SIGHUP) reloads them,
   the allowlist, routes and per-route rules without dropping a connection
   the new configuration still accepts.`,
		Flags:        flags,
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			return runServer(c, stderr)
		},
	}
}

// serverSetup is everything a server start needs, loaded and checked.
type serverSetup struct {
	cfg    server.Config
	listen string
	src    trust.Sources
	store  *trust.Store
	rc     *trust.RevocationChecker // checks client chains; Start and Close it
}

// loadServer turns the flags into a checked server configuration. Every
// error is a *configError naming the flag.
func loadServer(c *cli.Context, fc *fileConfig, log *logrus.Entry) (*serverSetup, error) {
	if c.Args().Len() > 0 {
		return nil, &configError{err: fmt.Errorf("unexpected argument %q", c.Args().First())}
	}
	listen := c.String("listen")
	if err := checkListen(listen); err != nil {
		return nil, flagError("--listen", "%q: %v", listen, err)
	}
	allow := splitValues(c.StringSlice("allow"), ",")
	if len(allow) == 0 {
		return nil, flagError("--allow", "required: name the client addresses that may connect (--allow 0.0.0.0/0 --allow ::/0 allows every address)")
	}
	al, err := netfilter.ParseAllowlist(allow)
	if err != nil {
		return nil, &configError{flag: "--allow", err: err}
	}
	var routes []server.Route
	for _, v := range splitValues(c.StringSlice("route"), "") {
		r, err := server.ParseRoute(v)
		if err != nil {
			return nil, &configError{flag: "--route", err: err}
		}
		r.Access = fc.routeAccess(r.Name) // allow_identities and allow of the config file
		routes = append(routes, r)
	}
	if len(routes) == 0 {
		return nil, flagError("--route", "required: at least one NAME=HOST:PORT")
	}
	rawRoute, upstreams, err := loadLBFlags(c, routes)
	if err != nil {
		return nil, err
	}
	policy, err := revocationPolicy(c)
	if err != nil {
		return nil, err
	}
	src, err := tlsSources(c)
	if err != nil {
		return nil, err
	}
	m, err := loadTrust(src)
	if err != nil {
		return nil, err
	}
	for _, d := range []string{"handshake-timeout", "dial-timeout", "idle-timeout", "shutdown-timeout", "max-session-lifetime", "proxy-header-timeout"} {
		if c.Duration(d) < 0 {
			return nil, flagError("--"+d, "%v is negative", c.Duration(d))
		}
	}
	for _, d := range []string{"first-byte-timeout", "client-hello-timeout"} {
		if c.Duration(d) <= 0 { // every wait on a peer has a deadline
			return nil, flagError("--"+d, "%v is not a positive duration", c.Duration(d))
		}
	}
	if c.Duration("handshake-timeout") == 0 || c.Duration("dial-timeout") == 0 {
		return nil, flagError("--handshake-timeout/--dial-timeout", "must be positive")
	}
	for _, n := range []string{"max-pending", "max-handshakes", "max-streams", "max-sessions-per-identity"} {
		if c.Int(n) < 1 {
			return nil, flagError("--"+n, "%d is not a positive number", c.Int(n))
		}
	}
	if c.Int("max-stream-rate") < 0 {
		return nil, flagError("--max-stream-rate", "%d is negative", c.Int("max-stream-rate"))
	}
	sessionMemory, err := parseSize(c.String("session-memory"))
	if err != nil {
		return nil, flagError("--session-memory", "%v", err)
	}
	memoryBudget, err := parseSize(c.String("memory-budget"))
	if err != nil {
		return nil, flagError("--memory-budget", "%v", err)
	}
	if sessionMemory > memoryBudget {
		return nil, flagError("--session-memory", "%s is more than --memory-budget %s", c.String("session-memory"), c.String("memory-budget"))
	}
	if c.Int("max-conns-per-addr") < 0 {
		return nil, flagError("--max-conns-per-addr", "%d is negative", c.Int("max-conns-per-addr"))
	}
	filter, err := netfilter.NewFilter(netfilter.FilterConfig{Allowlist: al, Log: log, MaxConnsPerAddr: c.Int("max-conns-per-addr")})
	if err != nil {
		return nil, &configError{err: err}
	}
	store := trust.NewStore(m)
	rc := trust.NewRevocationChecker(policy, store, log)
	cfg := server.Config{
		Trust:                  store,
		Revocation:             rc,
		Filter:                 filter,
		Routes:                 routes,
		RawRoute:               rawRoute,
		ProxyProtocolFrom:      upstreams,
		ProxyHeaderTimeout:     c.Duration("proxy-header-timeout"),
		FirstByteTimeout:       c.Duration("first-byte-timeout"),
		ClientHelloTimeout:     c.Duration("client-hello-timeout"),
		MaxPending:             c.Int("max-pending"),
		HandshakeTimeout:       c.Duration("handshake-timeout"),
		MaxHandshakes:          c.Int("max-handshakes"),
		DialTimeout:            c.Duration("dial-timeout"),
		IdleTimeout:            c.Duration("idle-timeout"),
		ShutdownTimeout:        c.Duration("shutdown-timeout"),
		MaxStreamsPerSession:   c.Int("max-streams"),
		MaxSessionsPerIdentity: c.Int("max-sessions-per-identity"),
		StreamRate:             c.Int("max-stream-rate"),
		SessionMemory:          sessionMemory,
		MemoryBudget:           memoryBudget,
		MaxSessionLifetime:     c.Duration("max-session-lifetime"),
		Log:                    log,
	}
	if c.Duration("shutdown-timeout") == 0 {
		cfg.ShutdownTimeout = time.Nanosecond // 0 on the command line: do not wait
	}
	return &serverSetup{cfg: cfg, listen: listen, src: src, store: store, rc: rc}, nil
}

func runServer(cmd *cli.Context, stderr io.Writer) error {
	layers, err := captureFlags(cmd)
	if err != nil {
		return err
	}
	c, fc, err := layers.resolve() // flags over environment over --config file
	if err != nil {
		return err
	}
	log, err := newLogger(c, stderr, "server")
	if err != nil {
		return err
	}
	if err := checkAdmin(c); err != nil {
		return err
	}
	setup, err := loadServer(c, fc, log)
	if err != nil {
		return &configError{err: errors.New(fc.flagProblem(err).String())}
	}
	token, err := newAdminToken(c)
	if err != nil {
		return err
	}
	srv, err := server.New(setup.cfg)
	if err != nil {
		return &configError{err: err}
	}
	// TCP keepalive on every accepted connection finds dead clients on
	// paths where nothing else is sent; Go enables TCP_NODELAY by default.
	lc := net.ListenConfig{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 4}}
	ln, err := lc.Listen(c.Context, "tcp", setup.listen)
	if err != nil {
		return flagError("--listen", "%v", err)
	}
	ctx := c.Context
	rc := setup.rc
	defer rc.Close()
	reloader := &serverReloader{layers: layers, running: c, log: log, srv: srv, store: setup.store, filter: setup.cfg.Filter, rc: rc, token: token}
	reloads, stopReload, err := startReloads(ctx, log, c.Duration("reload-interval"), watchPaths(setup.src, layers, token), reloader.apply)
	if err != nil {
		return flagError("--reload-interval", "%v", err)
	}
	defer stopReload()
	logTrust(log, setup.store.Material())
	logWarnings(log, append(allowWarnings(setup.cfg.Filter.Allowlist()), keyFileWarnings(c)...))
	log.WithField("revocation", revocationSummary(rc.Policy(), len(setup.src.CRLFiles))).Info("revocation checking of client chains")
	rc.Start(ctx)
	stopAdmin, err := startAdmin(c, log, token, admin.Config{
		Reload: func() { reloads.Request(reload.TriggerAdmin) },
		Ready: func() error {
			if setup.store.Material() == nil {
				return errors.New("no TLS material loaded")
			}
			return nil // listening: the listener is bound before the admin starts
		},
		RefreshCRLs: rc.Refresh,
		Collectors:  []prometheus.Collector{admin.ServerCollector(srv), admin.RevocationCollector(rc), admin.ReloadCollector(reloads.Counts)},
	})
	if err != nil {
		return err
	}
	defer stopAdmin()
	if err := srv.Serve(ctx, ln); err != nil && !errors.Is(err, server.ErrShutdownForced) {
		return fatal(log, err, "server failed")
	} else if err != nil {
		log.WithError(err).Warn("shutdown timeout reached; open streams were closed")
	}
	log.WithField(audit.Event, audit.ServerStopped).Info("server stopped")
	return nil
}

// checkListen checks a host:port to listen on: an IP literal (or empty for
// all addresses, or localhost) and a port.
func checkListen(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if _, err := netip.ParseAddr(host); err != nil && host != "" && host != "localhost" {
		return fmt.Errorf("host %q is not an IP address", host)
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("bad port %q", port)
	}
	return nil
}

func tlsSources(c *cli.Context) (trust.Sources, error) {
	src := trust.Sources{CertFile: c.String("cert"), KeyFile: c.String("key"), CAFile: c.String("ca"), CRLFiles: crlFiles(c)}
	for _, f := range []struct{ flag, v string }{{"--cert", src.CertFile}, {"--key", src.KeyFile}, {"--ca", src.CAFile}} {
		if f.v == "" {
			return src, flagError(f.flag, "required")
		}
	}
	return src, nil
}

// sourceFlags name the flag of each trust.Sources field.
var sourceFlags = map[string]string{"CertFile": "--cert", "KeyFile": "--key", "CAFile": "--ca", "CRLFiles": "--crl"}

// loadTrust loads the TLS files and names the flag of the first one at
// fault.
func loadTrust(src trust.Sources) (*trust.Material, error) {
	m, err := trust.Load(src)
	if err != nil {
		return nil, trustError(err)
	}
	return m, nil
}

func trustError(err error) error {
	var le *trust.LoadError
	if errors.As(err, &le) {
		return flagError(sourceFlags[le.Field], "%q: %v", le.Path, le.Err)
	}
	return &configError{err: err}
}

// logTrust logs which certificate the process presents, by serial and
// fingerprint, and warns if it expires soon.
func logTrust(log *logrus.Entry, m *trust.Material) {
	leaf := m.Certificate.Leaf
	id := trust.IdentityOf(leaf)
	e := log.WithFields(id.Fields()).WithFields(logrus.Fields{"not_after": leaf.NotAfter.UTC().Format(time.RFC3339), "ca_certs": len(m.CACerts)})
	if left := time.Until(leaf.NotAfter); left < 7*24*time.Hour {
		e.Warnf("own certificate expires in %v", left.Round(time.Minute))
		return
	}
	e.Info("own certificate loaded")
}
