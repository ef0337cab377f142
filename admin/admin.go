// Package admin owns the admin listener: Prometheus metrics, /healthz,
// /readyz, /status, and the reload, CRL-refresh and session-close
// endpoints, and who may call them.
// It sits above the roles whose counters it exports (server, client,
// trust); they never import it, and only it imports Prometheus.
package admin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/logthrottle"
)

// Defaults of Config.Spacing for each action: POST /reload runs a reload at
// most once a second, POST /crl/refresh refetches every CRL at most once
// every five (each refetch is a request to every CA's CRL server).
const (
	DefaultReloadSpacing  = time.Second
	DefaultRefreshSpacing = 5 * time.Second
	refusalLogInterval    = time.Minute
)

// Config configures the admin listener.
type Config struct {
	// Ready reports whether the process can do its job: nil when ready, or
	// why not. /readyz answers 200 or 503 with that reason.
	Ready func() error
	// Notes, if set, returns what works but needs an operator's attention
	// (a stale identity source, a missing OCSP staple), one line each;
	// /readyz adds them to its answer, 200 or 503.
	Notes func() []string
	// Exposes, if set, reports each of a server's exposes (reverse
	// tunnels) by name: nil when a client publishes it, or why it is down.
	// /readyz lists them below its verdict, which they do not change (a
	// server whose publishers are away still serves its clients, and its
	// publishers may reach it only through a balancer that asks /readyz);
	// /readyz?expose=NAME answers 200 or 503 for that expose alone (404
	// for a name it does not know), for a balancer in front of the
	// exposes' listeners.
	Exposes func() map[string]error
	// Reload, if set, serves POST /reload; it should start a reload and
	// return at once (the outcome is logged as reload_applied or
	// reload_rejected).
	Reload func()
	// RefreshCRLs, if set, serves POST /crl/refresh.
	RefreshCRLs func()
	// Token, if set, returns the bearer token that every request but
	// GET /healthz and GET /readyz must carry (Authorization: Bearer), or
	// nil for none. It is called for each request, so the token may change
	// (a reload re-reads its file).
	Token func() []byte
	// Spacing, if positive, is the least time between two runs of Reload
	// or of RefreshCRLs, instead of DefaultReloadSpacing and
	// DefaultRefreshSpacing. Requests in between join one run at its end.
	Spacing time.Duration
	// Status, if set, serves GET /status: what the process is doing, as
	// JSON (tunnel status).
	Status func() Status
	// CloseSession, if set, serves POST /sessions/{id}/close (tunnel status
	// --close): it closes the live session id, or returns ErrNoSession.
	CloseSession func(id string) error
	// Collectors are registered besides the Go runtime and process ones.
	Collectors []prometheus.Collector
	Log        logrus.FieldLogger
}

// Handler is the admin HTTP handler. Before any endpoint it refuses, with
// 403, a request whose Host is not the listener that accepted it (its
// port, and its address, a loopback address or "localhost"), unless it
// carries the token, and a request a browser sent for another origin (an
// Origin that is not the listener, or Sec-Fetch-Site cross-site or
// same-site). With a token, every endpoint but /healthz and /readyz
// answers 401 without it. /reload and /crl/refresh take POST only (405
// otherwise), and requests that come faster than Config.Spacing coalesce
// into one run. Close cancels a coalesced run not yet started. It is safe
// for concurrent use.
type Handler struct {
	cfg     Config
	mux     *http.ServeMux
	actions []*coalescer
	refusal *logthrottle.Throttle[string]
}

var _ http.Handler = (*Handler)(nil)

// NewHandler returns the admin handler for cfg. It registers the
// collectors in a registry of its own; a collector that fails to register
// (a duplicate metric) is an error.
func NewHandler(cfg Config) (*Handler, error) {
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
	h := &Handler{cfg: cfg, mux: http.NewServeMux(), refusal: &logthrottle.Throttle[string]{Interval: refusalLogInterval, Max: 16}}
	h.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: nil}))
	h.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	h.mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if name := r.URL.Query().Get("expose"); name != "" {
			h.exposeReady(w, name)
			return
		}
		var notes []string
		if cfg.Notes != nil {
			notes = cfg.Notes()
		}
		more := noteLines(notes) + "\n" + exposeLines(cfg.Exposes)
		if cfg.Ready != nil {
			if err := cfg.Ready(); err != nil {
				http.Error(w, strings.TrimSuffix("not ready: "+err.Error()+more, "\n"), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprint(w, "ready"+more)
	})
	h.statusHandlers()
	h.action("/reload", cfg.Reload, DefaultReloadSpacing)
	h.action("/crl/refresh", cfg.RefreshCRLs, DefaultRefreshSpacing)
	return h, nil
}

// noteLines is each of notes on a line of its own, each after a newline.
func noteLines(notes []string) string {
	var out strings.Builder
	for _, n := range notes {
		out.WriteString("\n" + n)
	}
	return out.String()
}

// exposeReady answers /readyz?expose=name.
func (h *Handler) exposeReady(w http.ResponseWriter, name string) {
	var state map[string]error
	if h.cfg.Exposes != nil {
		state = h.cfg.Exposes()
	}
	err, ok := state[name]
	switch {
	case !ok:
		http.Error(w, "no expose named "+strconv.Quote(truncate(name, 100)), http.StatusNotFound)
	case err != nil:
		http.Error(w, "expose "+name+": down: "+err.Error(), http.StatusServiceUnavailable)
	default:
		fmt.Fprintf(w, "expose %s: up\n", name)
	}
}

// exposeLines are /readyz's lines for the exposes, sorted by name: "expose
// NAME: up" or "expose NAME: down: why".
func exposeLines(exposes func() map[string]error) string {
	if exposes == nil {
		return ""
	}
	state := exposes()
	names := slices.Sorted(maps.Keys(state))
	var b strings.Builder
	for _, n := range names {
		if err := state[n]; err != nil {
			fmt.Fprintf(&b, "expose %s: down: %v\n", n, err)
		} else {
			fmt.Fprintf(&b, "expose %s: up\n", n)
		}
	}
	return b.String()
}

// action serves POST name by running fn through a coalescer.
func (h *Handler) action(name string, fn func(), spacing time.Duration) {
	if h.cfg.Spacing > 0 {
		spacing = h.cfg.Spacing
	}
	var c *coalescer
	if fn != nil {
		c = &coalescer{spacing: spacing, run: func(n int) {
			if h.cfg.Log != nil {
				entry := h.cfg.Log.WithFields(logrus.Fields{audit.Event: audit.AdminRequest, audit.Path: name})
				if n > 1 {
					entry = entry.WithField(audit.Count, n)
				}
				entry.Info("admin request: running")
			}
			fn()
		}}
		h.actions = append(h.actions, c)
	}
	h.mux.HandleFunc("POST "+name, func(w http.ResponseWriter, r *http.Request) {
		if c == nil {
			http.Error(w, name+" is not available in this role", http.StatusNotFound)
			return
		}
		w.WriteHeader(http.StatusAccepted)
		if c.request() {
			fmt.Fprintln(w, "accepted; joins a run already due; the outcome is in the log")
			return
		}
		fmt.Fprintln(w, "accepted; the outcome is in the log")
	})
}

// ServeHTTP checks the request's Host, Origin and token, then serves it.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	local := localAddr(r)
	var token []byte
	if h.cfg.Token != nil {
		token = h.cfg.Token()
	}
	authed := len(token) > 0 && tokenOK(r, token)
	if !allowedHost(r.Host, local) && !authed {
		h.refuse(w, r, http.StatusForbidden, refusedHost, fmt.Sprintf("Host %q is not this listener", truncate(r.Host, 100)))
		return
	}
	if err := checkOrigin(r, local); err != nil {
		h.refuse(w, r, http.StatusForbidden, refusedOrigin, err.Error())
		return
	}
	if len(token) > 0 && !authed && r.URL.Path != "/healthz" && r.URL.Path != "/readyz" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="tunnel admin"`)
		h.refuse(w, r, http.StatusUnauthorized, refusedToken, "a bearer token is required")
		return
	}
	h.mux.ServeHTTP(w, r)
}

// refuse answers code and logs an admin_refused line, at most one a minute
// per reason, with the number of refusals it stands for.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, code int, reason, why string) {
	http.Error(w, http.StatusText(code)+": "+why, code)
	if h.cfg.Log == nil {
		return
	}
	n, _, ok := h.refusal.Hit(reason)
	if !ok {
		return
	}
	h.cfg.Log.WithFields(logrus.Fields{audit.Event: audit.AdminRefused, audit.Reason: reason, audit.Path: truncate(r.URL.Path, 100),
		audit.Addr: r.RemoteAddr, audit.Count: n, audit.Error: why}).Warn("admin request refused")
}

// Close cancels coalesced runs not yet started and waits for one that is
// starting. Requests after Close are answered but run nothing.
func (h *Handler) Close() {
	for _, c := range h.actions {
		c.stop()
	}
}

// ErrNotLoopback is CheckAddr's error for an address that is not loopback.
var ErrNotLoopback = errors.New("not a loopback address")

// CheckAddr refuses an admin address that is not a loopback IP literal
// unless allowRemote: metrics and the reload endpoint are for the host's
// own operator, and a POST /reload must not face a network unless a token
// guards it (the CLI requires one with allowRemote). The error for a
// non-loopback address is ErrNotLoopback.
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
	return ErrNotLoopback
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
