package main

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/admin"
	"github.com/tunnel-dev/tunnel/client"
	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/systemd"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/server"
	"github.com/tunnel-dev/tunnel/trust"
)

// serverRole and clientRole are what the driver needs of each role.
var (
	serverRole = role{name: "server", settings: serverSettings, chains: "client chains", open: openServer}
	clientRole = role{name: "client", settings: clientSettings, chains: "the server's chain", open: openClient}
)

// serverRun is a server built from its settings.
type serverRun struct {
	s     *config.Settings
	srv   *server.Server
	store *trust.Store
	log   *logrus.Entry
	ln    net.Listener   // bound by bind; Serve closes it
	xlns  []net.Listener // the exposes' listeners, in the order of s.Server.Exposes; ServeExpose closes each
}

func openServer(s *config.Settings, t roleTrust) (running, error) {
	filter, err := netfilter.NewFilter(netfilter.FilterConfig{Allowlist: s.Server.Allow, Log: t.log, MaxConnsPerAddr: s.Server.MaxConnsPerAddr})
	if err != nil {
		return nil, err
	}
	cfg := s.Server.Config
	cfg.Trust, cfg.Revocation, cfg.Filter, cfg.Log = t.store, t.rc, filter, t.log
	cfg.TrustOptions = trustOptions(s, t.stapler)
	srv, err := server.New(cfg)
	if err != nil {
		return nil, err
	}
	return &serverRun{s: s, srv: srv, store: t.store, log: t.log}, nil
}

func (r *serverRun) bind(ctx context.Context) error {
	if name, ok := systemd.SocketName(r.s.Server.Listen); ok {
		ln, err := systemd.Listener(name) // socket activation: the allowlist applies in Serve as to our own
		if err != nil {
			return &configError{err: errors.New(r.s.Values.At("listen", "%v", err).String())}
		}
		r.ln = ln
		return nil
	}
	// TCP keepalive on every accepted connection finds dead clients on
	// paths where nothing else is sent; Go enables TCP_NODELAY by default.
	lc := net.ListenConfig{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 4}}
	ln, err := lc.Listen(ctx, "tcp", r.s.Server.Listen)
	if err != nil {
		return &configError{err: errors.New(r.s.Values.At("listen", "%v", err).String())}
	}
	for _, x := range r.s.Server.Exposes {
		xln, err := lc.Listen(ctx, "tcp", x.Listen)
		if err != nil {
			ln.Close()
			for _, l := range r.xlns {
				l.Close()
			}
			return &configError{err: errors.New(r.s.Values.At("exposes", "expose %s on %s: %v", x.Name, x.Listen, err).String())}
		}
		r.xlns = append(r.xlns, xln)
	}
	r.ln = ln
	return nil
}

func (r *serverRun) run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait() // the exposes' connections end with Serve's drain
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // before the Wait: a Serve that failed stops the exposes too
	for i, x := range r.s.Server.Exposes {
		wg.Go(func() {
			if err := r.srv.ServeExpose(ctx, x.Name, r.xlns[i]); err != nil {
				r.log.WithError(err).Error("expose failed")
			}
		})
	}
	if err := r.srv.Serve(ctx, r.ln); err != nil && !errors.Is(err, server.ErrShutdownForced) {
		return fatal(r.log, err, "server failed")
	} else if err != nil {
		r.log.WithError(err).Warn("shutdown timeout reached; open streams were closed")
	}
	r.log.WithField(audit.Event, audit.ServerStopped).Info("server stopped")
	return nil
}

func (r *serverRun) ready() error {
	if r.store.Material() == nil {
		return errors.New("no TLS material loaded")
	}
	return nil // listening: the listener is bound before the admin starts
}

func (r *serverRun) collector() prometheus.Collector { return admin.ServerCollector(r.srv) }

// exposes reports each expose up (nil) or down, for /readyz.
func (r *serverRun) exposes() map[string]error { return r.srv.ExposesDown() }

func (r *serverRun) reload(_ context.Context, next *config.Settings) (logrus.Fields, error) {
	closed, err := r.srv.Reload(next.ServerState())
	if err != nil {
		return nil, err
	}
	if next.RoutesReplaced() {
		r.log.Warn("routes from --route replace the config file's routes and their allow_identities/allow rules")
	}
	return logrus.Fields{audit.AllowPrefixes: next.Server.Allow.Len(), audit.Routes: len(next.Server.Config.Routes), audit.SessionsClosed: closed}, nil
}

// clientRun is a client built from its settings.
type clientRun struct {
	s   *config.Settings
	cl  *client.Client
	log *logrus.Entry
}

func openClient(s *config.Settings, t roleTrust) (running, error) {
	cfg := s.Client.Config
	cfg.Trust, cfg.Revocation, cfg.Log = t.store, t.rc, t.log
	cfg.TrustOptions = trustOptions(s, nil)
	cl, err := client.New(cfg)
	if err != nil {
		return nil, err
	}
	return &clientRun{s: s, cl: cl, log: t.log}, nil
}

func (r *clientRun) bind(ctx context.Context) error {
	if err := r.cl.Listen(ctx); err != nil {
		return problemError(r.s, err)
	}
	return nil
}

func (r *clientRun) run(ctx context.Context) error {
	if err := r.cl.Run(ctx); err != nil {
		return fatal(r.log, err, "client failed")
	}
	r.log.WithField(audit.Event, audit.ClientStopped).Info("client stopped")
	return nil
}

func (r *clientRun) ready() error {
	if !r.cl.Stats().SessionUp && !r.s.Client.Config.Raw { // --raw keeps no session
		return errors.New("no session to the server")
	}
	return nil
}

func (r *clientRun) collector() prometheus.Collector { return admin.ClientCollector(r.cl) }

func (r *clientRun) reload(ctx context.Context, next *config.Settings) (logrus.Fields, error) {
	if err := r.cl.Reload(ctx, next.ClientState()); err != nil {
		return nil, err
	}
	return logrus.Fields{audit.Forwards: len(next.Client.Config.Forwards)}, nil
}
