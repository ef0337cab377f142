package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"

	"github.com/tunnel-dev/tunnel/admin"
	"github.com/tunnel-dev/tunnel/client"
	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/reload"
	"github.com/tunnel-dev/tunnel/trust"
)

func clientCommand(stderr io.Writer) *cli.Command {
	flags := []cli.Flag{
		&cli.StringSliceFlag{Name: "server", EnvVars: []string{"TUNNEL_SERVER"}, Usage: "server `HOST:PORT` to dial (required; repeatable: the next one is tried at once when a dial fails)"},
		&cli.StringFlag{Name: "server-name", EnvVars: []string{"TUNNEL_SERVER_NAME"}, Usage: "`NAME` the server certificate must carry (default: the host of the --server being dialled)"},
		&cli.BoolFlag{Name: "raw", EnvVars: []string{"TUNNEL_RAW"}, Usage: "plain TLS: one mutual-TLS connection per local connection, no ALPN, no multiplexing (for stunnel, ghostunnel, or a --raw-route)"},
		&cli.StringFlag{Name: "source", EnvVars: []string{"TUNNEL_SOURCE"}, Usage: "local `IP` to dial the servers from (default: chosen by the kernel)"},
		&cli.StringSliceFlag{Name: "forward", EnvVars: []string{"TUNNEL_FORWARD"}, Usage: "local `[HOST:]PORT=ROUTE` whose connections go to ROUTE (repeatable; a bare port listens on 127.0.0.1)"},
		&cli.DurationFlag{Name: "connect-timeout", Value: client.DefaultConnectTimeout, EnvVars: []string{"TUNNEL_CONNECT_TIMEOUT"}, Usage: "how long a local connection waits for the session while it is down"},
		&cli.DurationFlag{Name: "dial-timeout", Value: client.DefaultDialTimeout, EnvVars: []string{"TUNNEL_DIAL_TIMEOUT"}, Usage: "limit on one dial of the server, TCP and TLS"},
		&cli.DurationFlag{Name: "keepalive", Value: client.DefaultKeepalive, EnvVars: []string{"TUNNEL_KEEPALIVE"}, Usage: "session ping interval; a dead server is noticed within this plus --keepalive-timeout"},
		&cli.DurationFlag{Name: "keepalive-timeout", Value: client.DefaultKeepaliveTimeout, EnvVars: []string{"TUNNEL_KEEPALIVE_TIMEOUT"}, Usage: "how long a ping may go unanswered before the session is dropped and redialled"},
		&cli.DurationFlag{Name: "idle-timeout", EnvVars: []string{"TUNNEL_IDLE_TIMEOUT"}, Usage: "close a stream idle this long both ways (0: never)"},
	}
	flags = append(flags, tlsFlags("server CA bundle `FILE`: the server certificate must chain to it")...)
	flags = append(flags, revocationFlags()...)
	flags = append(flags, adminFlags()...)
	flags = append(flags, logFlags()...)
	flags = append(flags, configFileFlag())
	flags = append(flags, reloadFlags()...)
	return &cli.Command{
		Name:  "client",
		Usage: "keep a mutual-TLS session to a server and expose its routes on local ports",
		Description: `Example:
   tunnel client --server tunnel.example.com:8443 \
     --cert pki/app1.pem --key pki/app1-key.pem --ca pki/ca.pem \
     --forward 127.0.0.1:15432=db --forward 16379=cache

   Then "psql -h 127.0.0.1 -p 15432" reaches route db on the server.
   Exit status: 0 after SIGINT/SIGTERM, 1 on a runtime failure, 2 on a
   configuration error (a forward port already taken is one).

   --config client.yaml reads every setting from a YAML file (docs/CONFIG.md);
   flags and TUNNEL_* variables override it. A change to the certificate,
   key, CA, CRL or config file (or SIGHUP) reloads them: the next dial
   presents the new certificate, and forwards that changed open or close.`,
		Flags:        flags,
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			return runClient(c, stderr)
		},
	}
}

// clientSetup is everything a client start needs, loaded and checked.
type clientSetup struct {
	cfg   client.Config
	src   trust.Sources
	store *trust.Store
	rc    *trust.RevocationChecker // checks the server's chain; Start and Close it
}

// loadClient turns the flags into a checked client configuration.
func loadClient(c *cli.Context, fc *fileConfig, log *logrus.Entry) (*clientSetup, error) {
	if c.Args().Len() > 0 {
		return nil, &configError{err: fmt.Errorf("unexpected argument %q", c.Args().First())}
	}
	servers, source, err := loadServerFlags(c)
	if err != nil {
		return nil, err
	}
	var fwds []client.Forward
	for _, v := range splitValues(c.StringSlice("forward"), ",") {
		f, err := client.ParseForward(v)
		if err != nil {
			return nil, &configError{flag: "--forward", err: err}
		}
		fwds = append(fwds, f)
	}
	if len(fwds) == 0 {
		return nil, flagError("--forward", "required: at least one [HOST:]PORT=ROUTE")
	}
	for _, d := range []string{"connect-timeout", "dial-timeout", "keepalive", "keepalive-timeout", "idle-timeout"} {
		if c.Duration(d) < 0 {
			return nil, flagError("--"+d, "%v is negative", c.Duration(d))
		}
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
	store := trust.NewStore(m)
	rc := trust.NewRevocationChecker(policy, store, log)
	cfg := client.Config{
		Server:           servers[0],
		Failover:         servers[1:],
		Source:           source,
		Raw:              c.Bool("raw"),
		Trust:            store,
		ServerName:       c.String("server-name"), // empty: each dial checks the host it dialled
		Revocation:       rc,
		Forwards:         fwds,
		ConnectTimeout:   c.Duration("connect-timeout"),
		DialTimeout:      c.Duration("dial-timeout"),
		Keepalive:        c.Duration("keepalive"),
		KeepaliveTimeout: c.Duration("keepalive-timeout"),
		IdleTimeout:      c.Duration("idle-timeout"),
		Log:              log,
	}
	return &clientSetup{cfg: cfg, src: src, store: store, rc: rc}, nil
}

func runClient(cmd *cli.Context, stderr io.Writer) error {
	layers, err := captureFlags(cmd)
	if err != nil {
		return err
	}
	c, fc, err := layers.resolve() // flags over environment over --config file
	if err != nil {
		return err
	}
	log, err := newLogger(c, stderr, "client")
	if err != nil {
		return err
	}
	if err := checkAdmin(c); err != nil {
		return err
	}
	setup, err := loadClient(c, fc, log)
	if err != nil {
		return &configError{err: errors.New(fc.flagProblem(err).String())}
	}
	cfg, src, store := setup.cfg, setup.src, setup.store
	token, err := newAdminToken(c)
	if err != nil {
		return err
	}
	cl, err := client.New(cfg)
	if err != nil {
		return &configError{err: err}
	}
	if err := cl.Listen(c.Context); err != nil {
		var le *client.ListenError
		if errors.As(err, &le) {
			return flagError("--forward", "%s=%s: %v", le.Forward.Listen, le.Forward.Route, le.Err)
		}
		return &configError{err: err}
	}
	defer setup.rc.Close()
	reloader := &clientReloader{layers: layers, running: c, log: log, cl: cl, store: store, rc: setup.rc, token: token}
	reloads, stopReload, err := startReloads(c.Context, log, c.Duration("reload-interval"), watchPaths(src, layers, token), reloader.apply)
	if err != nil {
		return flagError("--reload-interval", "%v", err)
	}
	defer stopReload()
	logTrust(log, store.Material())
	logWarnings(log, keyFileWarnings(c))
	log.WithField("revocation", revocationSummary(setup.rc.Policy(), len(src.CRLFiles))).Info("revocation checking of the server's chain")
	setup.rc.Start(c.Context)
	stopAdmin, err := startAdmin(c, log, token, admin.Config{
		Reload: func() { reloads.Request(reload.TriggerAdmin) },
		Ready: func() error {
			if !cl.Stats().SessionUp && !setup.cfg.Raw { // --raw keeps no session
				return errors.New("no session to the server")
			}
			return nil
		},
		RefreshCRLs: setup.rc.Refresh,
		Collectors:  []prometheus.Collector{admin.ClientCollector(cl), admin.RevocationCollector(setup.rc), admin.ReloadCollector(reloads.Counts)},
	})
	if err != nil {
		return err
	}
	defer stopAdmin()
	if err := cl.Run(c.Context); err != nil {
		return fatal(log, err, "client failed")
	}
	log.WithField(audit.Event, audit.ClientStopped).Info("client stopped")
	return nil
}
