// Package admin owns the admin listener: Prometheus metrics, /healthz,
// /readyz, and the reload and CRL-refresh endpoints.
package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
)

// Config configures the admin listener.
type Config struct {
	// Ready reports whether the process can do its job: nil when ready, or
	// why not. /readyz answers 200 or 503 with that reason.
	Ready func() error
	// Reload, if set, serves POST /reload; it should start a reload and
	// return at once (the outcome is logged as reload_applied or
	// reload_rejected).
	Reload func()
	// RefreshCRLs, if set, serves POST /crl/refresh.
	RefreshCRLs func()
	// Collectors are registered besides the Go runtime and process ones.
	Collectors []prometheus.Collector
	Log        logrus.FieldLogger
}

// Handler returns the admin HTTP handler for cfg. It registers the
// collectors in a registry of its own; a collector that fails to register
// (a duplicate metric) is an error.
func Handler(cfg Config) (http.Handler, error) {
	reg := prometheus.NewRegistry()
	cs := append([]prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	}, cfg.Collectors...)
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("admin: registering metrics: %w", err)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: nil}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if cfg.Ready != nil {
			if err := cfg.Ready(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ready")
	})
	action := func(name string, fn func()) {
		mux.HandleFunc("POST "+name, func(w http.ResponseWriter, r *http.Request) {
			if fn == nil {
				http.Error(w, name+" is not available in this role", http.StatusNotFound)
				return
			}
			if cfg.Log != nil {
				cfg.Log.WithFields(logrus.Fields{audit.Event: "admin_request", "path": name, audit.Addr: r.RemoteAddr}).Info("admin request")
			}
			fn()
			w.WriteHeader(http.StatusAccepted)
			fmt.Fprintln(w, "accepted; the outcome is in the log")
		})
	}
	action("/reload", cfg.Reload)
	action("/crl/refresh", cfg.RefreshCRLs)
	return mux, nil
}

// CheckAddr refuses an admin address that is not a loopback IP literal
// unless allowRemote: metrics and the reload endpoint are for the host's
// own operator, and an unauthenticated POST /reload must not face a network.
func CheckAddr(addr string, allowRemote bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("bad port %q", port)
	}
	if host == "localhost" {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if host != "" && err != nil {
		return fmt.Errorf("host %q is not an IP address", host)
	}
	if allowRemote || host != "" && ip.Unmap().IsLoopback() {
		return nil
	}
	return errors.New("not a loopback address (use --admin-allow-remote to serve it on a network)")
}

// Serve serves h on ln until ctx ends, then shuts down within a second.
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10}
	shut := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(shut)
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	err := srv.Serve(ln)
	if stop() {
		return err // ln failed before ctx ended
	}
	<-shut
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
