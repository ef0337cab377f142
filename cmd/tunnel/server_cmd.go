package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"

	"github.com/tunnel-dev/tunnel/internal/admin"
	"github.com/tunnel-dev/tunnel/internal/audit"
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
		&cli.StringSliceFlag{Name: "route", EnvVars: []string{"TUNNEL_ROUTE"}, Usage: "backend `NAME=HOST:PORT` or NAME=unix:/PATH (repeatable)"},
		&cli.DurationFlag{Name: "handshake-timeout", Value: server.DefaultHandshakeTimeout, EnvVars: []string{"TUNNEL_HANDSHAKE_TIMEOUT"}, Usage: "limit on one TLS handshake"},
		&cli.IntFlag{Name: "max-handshakes", Value: server.DefaultMaxHandshakes(), EnvVars: []string{"TUNNEL_MAX_HANDSHAKES"}, Usage: "TLS handshakes in flight; more are reset (default 128 x GOMAXPROCS)"},
		&cli.DurationFlag{Name: "dial-timeout", Value: server.DefaultDialTimeout, EnvVars: []string{"TUNNEL_DIAL_TIMEOUT"}, Usage: "limit on one backend dial"},
		&cli.DurationFlag{Name: "idle-timeout", EnvVars: []string{"TUNNEL_IDLE_TIMEOUT"}, Usage: "close a stream idle this long both ways (0: never)"},
		&cli.DurationFlag{Name: "shutdown-timeout", Value: server.DefaultShutdownTimeout, EnvVars: []string{"TUNNEL_SHUTDOWN_TIMEOUT"}, Usage: "on SIGINT/SIGTERM, how long open streams may finish"},
		&cli.IntFlag{Name: "max-streams", Value: server.DefaultMaxStreamsPerSession, EnvVars: []string{"TUNNEL_MAX_STREAMS"}, Usage: "concurrent streams per client session"},
	}
	flags = append(flags, tlsFlags("client CA bundle `FILE`: client certificates must chain to it")...)
	flags = append(flags, revocationFlags()...)
	flags = append(flags, adminFlags()...)
	flags = append(flags, logFlags()...)
	return &cli.Command{
		Name:  "server",
		Usage: "accept mutual-TLS clients and carry their streams to named backends",
		Description: `Example:
   tunnel server --listen 0.0.0.0:8443 \
     --cert pki/tunnel.example.com.pem --key pki/tunnel.example.com-key.pem --ca pki/ca.pem \
     --allow 10.0.0.0/8 --allow ::1 --route db=127.0.0.1:5432 --route pg=unix:/run/postgresql/.s.PGSQL.5432

   Repeatable flags also take several values separated by commas or spaces
   (--route: spaces only). Exit status: 0 after a clean shutdown, 1 on a
   runtime failure, 2 on a configuration error. SIGHUP reloads --cert, --key
   and --ca without dropping connections.`,
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
func loadServer(c *cli.Context, log *logrus.Entry) (*serverSetup, error) {
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
		routes = append(routes, r)
	}
	if len(routes) == 0 {
		return nil, flagError("--route", "required: at least one NAME=HOST:PORT")
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
	for _, d := range []string{"handshake-timeout", "dial-timeout", "idle-timeout", "shutdown-timeout"} {
		if c.Duration(d) < 0 {
			return nil, flagError("--"+d, "%v is negative", c.Duration(d))
		}
	}
	if c.Duration("handshake-timeout") == 0 || c.Duration("dial-timeout") == 0 {
		return nil, flagError("--handshake-timeout/--dial-timeout", "must be positive")
	}
	for _, n := range []string{"max-handshakes", "max-streams"} {
		if c.Int(n) < 1 {
			return nil, flagError("--"+n, "%d is not a positive number", c.Int(n))
		}
	}
	filter, err := netfilter.NewFilter(netfilter.FilterConfig{Allowlist: al, Log: log})
	if err != nil {
		return nil, &configError{err: err}
	}
	store := trust.NewStore(m)
	rc := trust.NewRevocationChecker(policy, store, log)
	cfg := server.Config{
		TLS:                  trust.ServerConfig(store, []string{trust.ALPNTunnel}, trust.WithRevocation(rc)),
		Filter:               filter,
		Routes:               routes,
		HandshakeTimeout:     c.Duration("handshake-timeout"),
		MaxHandshakes:        c.Int("max-handshakes"),
		DialTimeout:          c.Duration("dial-timeout"),
		IdleTimeout:          c.Duration("idle-timeout"),
		ShutdownTimeout:      c.Duration("shutdown-timeout"),
		MaxStreamsPerSession: c.Int("max-streams"),
		Log:                  log,
	}
	if c.Duration("shutdown-timeout") == 0 {
		cfg.ShutdownTimeout = time.Nanosecond // 0 on the command line: do not wait
	}
	return &serverSetup{cfg: cfg, listen: listen, src: src, store: store, rc: rc}, nil
}

func runServer(c *cli.Context, stderr io.Writer) error {
	log, err := newLogger(c, stderr, "server")
	if err != nil {
		return err
	}
	if err := checkAdmin(c); err != nil {
		return err
	}
	setup, err := loadServer(c, log)
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
	// A CRL that changed (fetched, or a CRL file reloaded) closes the live
	// sessions whose chain it now revokes.
	recheck := func() { srv.Recheck(audit.SessionRevoked, server.RevocationCheck(rc)) }
	rc.OnUpdate(recheck)
	stopReload := reloadOnSIGHUP(log, setup.src, setup.store, func() { recheck(); rc.Refresh() })
	defer stopReload()
	logTrust(log, setup.store.Material())
	log.WithField("revocation", revocationSummary(rc.Policy(), len(setup.src.CRLFiles))).Info("revocation checking of client chains")
	rc.Start(ctx)
	stopAdmin, err := startAdmin(c, log, admin.Config{
		Ready: func() error {
			if setup.store.Material() == nil {
				return errors.New("no TLS material loaded")
			}
			return nil // listening: the listener is bound before the admin starts
		},
		RefreshCRLs: rc.Refresh,
		Collectors:  []prometheus.Collector{admin.ServerCollector(srv, setup.cfg.Filter), admin.RevocationCollector(rc)},
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
	log.WithField(audit.Event, "server_stopped").Info("server stopped")
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

// loadTrust loads the TLS files and names the flag of the one at fault.
func loadTrust(src trust.Sources) (*trust.Material, error) {
	m, err := trust.Load(src)
	if err != nil {
		var le *trust.LoadError
		if errors.As(err, &le) {
			return nil, flagError("--"+le.Field, "%q: %v", le.Path, le.Err)
		}
		return nil, &configError{err: err}
	}
	return m, nil
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

// reloadOnSIGHUP reloads the TLS files on SIGHUP. A load that fails keeps
// the current material. After a swap it calls applied. It returns a function
// that stops it and waits.
func reloadOnSIGHUP(log *logrus.Entry, src trust.Sources, store *trust.Store, applied func()) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-hup:
			case <-done:
				return
			}
			m, err := trust.Load(src)
			if err != nil {
				log.WithFields(logrus.Fields{audit.Event: audit.ReloadRejected, audit.Reason: "load_failed", audit.Error: err.Error()}).
					Error("reload rejected; keeping the current certificates")
				continue
			}
			store.Swap(m)
			id := trust.IdentityOf(m.Certificate.Leaf)
			log.WithFields(id.Fields()).WithField(audit.Event, audit.ReloadApplied).Info("reload applied")
			applied()
		}
	}()
	return func() {
		signal.Stop(hup)
		close(done)
		<-finished
	}
}
