package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/trust"
)

// Status is what GET /status answers, as JSON: what a running server or
// client is doing. Field names are stable (tunnel status --json prints
// this document); docs/OPERATIONS.md describes them.
type Status struct {
	Role    string    `json:"role"` // "server" or "client"
	Version string    `json:"version"`
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
	Now     time.Time `json:"now"`
	// Sessions: the server's live sessions (and plain TLS clients, mode
	// raw); the client's current session, if one is up.
	Sessions []Session `json:"sessions"`
	Routes   []Route   `json:"routes,omitempty"`   // the server's routes
	Forwards []Forward `json:"forwards,omitempty"` // the client's forwards
	// Exposes are the server's reverse tunnels, with who publishes each;
	// Publications the client's, with the server's answer to each.
	Exposes      []Expose      `json:"exposes,omitempty"`
	Publications []Publication `json:"publications,omitempty"`
	// Session is the client's session state: up or down, and since when.
	Session      *SessionState `json:"session,omitempty"`
	Revocation   []Source      `json:"revocation"`
	Certificates []Certificate `json:"certificates"`
	Reload       Reload        `json:"reload"`
}

// Identity is a peer's certificate identity.
type Identity struct {
	CN          string   `json:"cn"`
	SANs        []string `json:"sans,omitempty"`
	Serial      string   `json:"serial"`
	Fingerprint string   `json:"fingerprint"`
}

// IdentityOf is the status form of id.
func IdentityOf(id trust.Identity) Identity {
	var sans []string
	sans = append(sans, id.DNSNames...)
	sans = append(sans, id.URIs...)
	sans = append(sans, id.IPs...)
	return Identity{CN: id.CommonName, SANs: sans, Serial: id.Serial, Fingerprint: id.Fingerprint}
}

// Session is a live session.
type Session struct {
	ID       string   `json:"id"`             // the session_id of its log lines
	Mode     string   `json:"mode,omitempty"` // "raw" for a plain TLS client
	Identity Identity `json:"identity"`       // the peer's
	// Addr is the peer's host:port: the client's on a server, the
	// server's on a client.
	Addr         string    `json:"addr"`
	Since        time.Time `json:"since"`
	Streams      int64     `json:"streams"`
	StreamsTotal uint64    `json:"streams_total,omitempty"`
	// BytesIn went towards the backends (on a client: came back from the
	// server); BytesOut the other way. Both count as the copies run.
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
}

// SessionState is the client's session to its server.
type SessionState struct {
	State     string    `json:"state"`               // "up", "down" or "none" (--raw keeps no session)
	ID        string    `json:"id,omitempty"`        // when up
	Server    string    `json:"server,omitempty"`    // when up
	Since     time.Time `json:"since,omitzero"`      // when up
	DownSince time.Time `json:"down_since,omitzero"` // when down after having been up
}

// Route is one of the server's routes.
type Route struct {
	Name         string `json:"name"`
	Target       string `json:"target"`
	Proxy        string `json:"proxy,omitempty"` // "v1" or "v2"
	Raw          bool   `json:"raw,omitempty"`   // the raw route
	Streams      int    `json:"streams"`         // open now
	StreamsTotal uint64 `json:"streams_total"`   // reached the backend since start
	BytesIn      uint64 `json:"bytes_in"`        // of closed streams, towards the backend
	BytesOut     uint64 `json:"bytes_out"`
}

// Forward is one of the client's forwards.
type Forward struct {
	Listen  string `json:"listen"` // as configured
	Addr    string `json:"addr"`   // bound
	Route   string `json:"route"`
	Streams int64  `json:"streams"`       // local connections now
	Total   uint64 `json:"streams_total"` // since it was bound
	Session string `json:"session"`       // the state of the session its streams go over
}

// Expose is one of the server's exposes (reverse tunnels).
type Expose struct {
	Name   string `json:"name"`
	Listen string `json:"listen"` // bound
	// Publishers are the clients that publish the name now, oldest
	// first; none means the expose is down and its connections are reset.
	Publishers   []Publisher `json:"publishers"`
	Active       int64       `json:"active"`        // inbound connections now
	StreamsTotal uint64      `json:"streams_total"` // carried to a publisher's target since start
	BytesIn      uint64      `json:"bytes_in"`      // of closed streams, towards the published target
	BytesOut     uint64      `json:"bytes_out"`
}

// Publisher is a live publication of an expose's name.
type Publisher struct {
	SessionID    string    `json:"session_id"` // the publishing session (tunnel status --close takes it)
	Identity     Identity  `json:"identity"`
	Addr         string    `json:"addr"`
	Since        time.Time `json:"since"`
	Streams      int64     `json:"streams"`       // open now
	StreamsTotal uint64    `json:"streams_total"` // since it went live
}

// Publication is one of the client's publications.
type Publication struct {
	Name   string `json:"name"`
	Target string `json:"target"`
	// State is "live" (the server carries the expose's connections here),
	// "refused" (Refused says with what status) or "pending" (no session,
	// or the server has not answered yet).
	State        string `json:"state"`
	Refused      string `json:"refused,omitempty"`
	Streams      int64  `json:"streams"`       // the server's streams open now
	StreamsTotal uint64 `json:"streams_total"` // that reached the target
	Failed       uint64 `json:"failed"`        // refused: the target unreachable
}

// Source is one source of revocation status.
type Source struct {
	Kind        string    `json:"kind"` // crl_file, crl or ocsp
	Source      string    `json:"source"`
	Issuer      string    `json:"issuer,omitempty"`
	Serial      string    `json:"serial,omitempty"` // ocsp: whose status
	Usable      bool      `json:"usable"`
	Status      string    `json:"status,omitempty"` // ocsp: good, revoked, unknown
	ThisUpdate  time.Time `json:"this_update,omitzero"`
	NextUpdate  time.Time `json:"next_update,omitzero"`
	AgeSeconds  float64   `json:"age_seconds,omitempty"` // now minus this_update
	NextRefresh time.Time `json:"next_refresh,omitzero"` // none for files: re-read on reload
	Failures    int       `json:"failures,omitempty"`    // fetches failed in a row
}

// SourcesOf is the status form of the sources, as of now.
func SourcesOf(srcs []trust.RevocationSource, now time.Time) []Source {
	out := make([]Source, 0, len(srcs))
	for _, s := range srcs {
		src := Source{Kind: s.Kind, Source: s.Source, Issuer: s.Issuer, Serial: s.Serial, Usable: s.Usable, Status: s.Status,
			ThisUpdate: s.ThisUpdate, NextUpdate: s.NextUpdate, NextRefresh: s.NextRefresh, Failures: s.Failures}
		if !s.ThisUpdate.IsZero() {
			src.AgeSeconds = now.Sub(s.ThisUpdate).Round(time.Second).Seconds()
		}
		out = append(out, src)
	}
	return out
}

// Certificate is one certificate the process loaded.
type Certificate struct {
	Kind             string    `json:"kind"` // leaf (its own), chain (sent with it) or ca (trusted)
	Subject          string    `json:"subject"`
	Serial           string    `json:"serial"`
	NotAfter         time.Time `json:"not_after"`
	ExpiresInSeconds float64   `json:"expires_in_seconds"` // negative once expired
}

// Reload is the reloads since start and the last one.
type Reload struct {
	Applied  uint64      `json:"applied"`
	Rejected uint64      `json:"rejected"`
	Last     *ReloadInfo `json:"last,omitempty"` // none before the first
}

// ReloadInfo is one reload's outcome.
type ReloadInfo struct {
	At         time.Time `json:"at"`
	Trigger    string    `json:"trigger"` // sighup, admin or file_changed
	Result     string    `json:"result"`  // applied or rejected
	Error      string    `json:"error,omitempty"`
	DurationMS int64     `json:"duration_ms"`
}

// ErrNoSession is what Config.CloseSession returns (wrapped or not) for an
// id that names no live session: POST /sessions/{id}/close answers 404.
var ErrNoSession = errors.New("no live session has that id")

// statusHandlers serves GET /status and POST /sessions/{id}/close.
func (h *Handler) statusHandlers() {
	h.mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		if h.cfg.Status == nil {
			http.Error(w, "/status is not available", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(h.cfg.Status()) // a client that went away needs no answer
	})
	h.mux.HandleFunc("POST /sessions/{id}/close", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if h.cfg.CloseSession == nil {
			http.Error(w, "closing sessions is not available", http.StatusNotFound)
			return
		}
		if h.cfg.Log != nil {
			h.cfg.Log.WithFields(logrus.Fields{audit.Event: audit.AdminRequest, audit.Path: truncate(r.URL.Path, 100),
				audit.Addr: r.RemoteAddr, audit.SessionID: truncate(id, 40)}).Info("admin request: closing a session")
		}
		if err := h.cfg.CloseSession(id); err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, ErrNoSession) {
				code = http.StatusNotFound
			}
			http.Error(w, fmt.Sprintf("session %q: %v", truncate(id, 40), err), code)
			return
		}
		fmt.Fprintf(w, "closed session %s\n", id)
	})
}
