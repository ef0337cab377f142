package config

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/admin"
	"github.com/tunnel-dev/tunnel/internal/systemd"
	"github.com/tunnel-dev/tunnel/trust"
)

// Settings are one role's settings, resolved and checked, with the TLS
// material loaded: what a start, a reload and `tunnel check` build the role
// from. They are never modified once built.
type Settings struct {
	Role           string // "server" or "client"
	File           string // the config file, or ""
	Log            Log
	Admin          Admin
	ReloadInterval time.Duration // re-read the watched files this often; 0: on events only
	TLS            trust.Sources
	Material       *trust.Material // loaded from TLS; nil with SPIFFE (see WithMaterial)
	Revocation     trust.RevocationPolicy
	Server         *Server // the server role's settings; nil for a client
	Client         *Client // the client role's settings; nil for a server
	Values         *Values // where each value came from, for problems and warnings

	// SPIFFE is the Workload API the role's certificate, key and CA
	// bundles come from; nil when they come from the files of TLS. The
	// process takes SPIFFE material from the agent and builds the role
	// from s.WithMaterial of it.
	SPIFFE *trust.SPIFFEConfig
}

// Log is how the process logs.
type Log struct {
	Format string       // "text" or "json"
	Level  logrus.Level // debug, info, warn or error
}

// TimeFormat is how every log line writes its time: RFC 3339 with all nine
// digits of nanoseconds (time.RFC3339Nano drops trailing zeros; this does
// not, so lines sort as text), in the process's zone.
const TimeFormat = "2006-01-02T15:04:05.000000000Z07:00"

// Logger returns a logger that writes to w in l's format, at l's level,
// with TimeFormat timestamps.
func (l Log) Logger(w io.Writer) *logrus.Logger {
	lg := logrus.New()
	lg.SetOutput(w)
	lg.SetLevel(l.Level)
	if l.Format == "json" {
		lg.SetFormatter(&logrus.JSONFormatter{TimestampFormat: TimeFormat})
	} else {
		lg.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, DisableColors: true, TimestampFormat: TimeFormat})
	}
	return lg
}

// Admin is the admin listener's settings.
type Admin struct {
	Addr        string // "" for no admin listener
	AllowRemote bool   // Addr may be a non-loopback address (then TokenFile is set)
	TokenFile   string // the bearer token's file, or ""
}

// Settings builds the typed settings from v and loads the TLS material. It
// returns every problem it finds, at most one per setting, leaving out the
// settings whose value in the config file had a problem (Resolve returned
// those); the Settings are nil if it found any. A library that the caller
// then builds from the Settings may find more: Values.Problem names their
// setting.
func (v *Values) Settings() (*Settings, []Problem) {
	ps := &problems{v: v}
	s := &Settings{Role: v.in.Role, File: v.in.File, Values: v}
	s.Log = v.logSettings(ps)
	s.Admin = v.adminSettings(ps)
	switch v.in.Role {
	case "server":
		s.Server = v.serverSettings(ps)
	case "client":
		s.Client = v.clientSettings(ps)
	default:
		ps.add(Problem{Msg: fmt.Sprintf("config: unknown role %q", v.in.Role)})
	}
	s.Revocation = v.revocation(ps)
	s.TLS = v.sources()
	var loadFiles bool
	s.SPIFFE, loadFiles = v.spiffeSettings(ps)
	missing := !loadFiles
	for _, key := range tlsFileKeys {
		if loadFiles && v.text(key) == "" {
			ps.at(key, "required (or %s for the SPIFFE Workload API)", v.Flag("spiffe.socket"))
			missing = true
		}
	}
	if !missing {
		m, err := trust.Load(s.TLS)
		for _, e := range unjoin(err) {
			ps.err(e)
		}
		s.Material = m
	}
	s.ReloadInterval = v.duration(ps, "reload.interval")
	if len(ps.list) > 0 {
		return nil, ps.list
	}
	return s, nil
}

// unjoin returns the errors err joins, err itself, or none.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err != nil {
		return []error{err}
	}
	return nil
}

func (v *Values) logSettings(ps *problems) Log {
	l := Log{Format: v.text("log.format")}
	if l.Format != "text" && l.Format != "json" {
		ps.at("log.format", "%q is not text or json", l.Format)
	}
	lvl, err := logrus.ParseLevel(v.text("log.level"))
	if err != nil || lvl > logrus.DebugLevel || lvl < logrus.ErrorLevel {
		ps.at("log.level", "%q is not debug, info, warn or error", v.text("log.level"))
	}
	l.Level = lvl
	return l
}

func (v *Values) adminSettings(ps *problems) Admin {
	a := Admin{Addr: v.text("admin"), AllowRemote: v.boolean(ps, "admin_allow_remote"), TokenFile: v.text("admin_token_file")}
	if a.Addr == "" {
		if a.TokenFile != "" {
			ps.at("admin_token_file", "given without %s: there is no admin listener to protect", v.Flag("admin"))
		}
		return a
	}
	if err := admin.CheckAddr(a.Addr, a.AllowRemote); errors.Is(err, admin.ErrNotLoopback) {
		ps.at("admin", "%q: %v (use %s to serve it on a network)", a.Addr, err, v.Flag("admin_allow_remote"))
	} else if err != nil {
		ps.at("admin", "%q: %v", a.Addr, err)
	}
	if a.AllowRemote && a.TokenFile == "" {
		ps.at("admin_allow_remote", "requires %s: a network-facing admin listener would take POST /reload and serve /metrics to anyone who reaches it", v.Flag("admin_token_file"))
	}
	if a.TokenFile != "" {
		if _, err := admin.LoadToken(a.TokenFile); err != nil {
			ps.at("admin_token_file", "%v", err)
		}
	}
	return a
}

// revocation reads the crl settings into a policy; trust checks its ranges.
func (v *Values) revocation(ps *problems) trust.RevocationPolicy {
	p := trust.DefaultRevocationPolicy()
	p.Disabled = v.boolean(ps, "crl.disable")
	p.Fetch = v.boolean(ps, "crl.fetch")
	p.EndEntityOnly = v.boolean(ps, "crl.end_entity_only")
	p.DenyOnUnavailable = v.boolean(ps, "crl.deny_on_unavailable")
	p.EnforceExpiration = v.boolean(ps, "crl.enforce_expiration")
	p.StaleGrace = v.duration(ps, "crl.stale_grace")
	p.RefreshInterval = v.duration(ps, "crl.refresh_interval")
	p.BootstrapTimeout = v.duration(ps, "crl.bootstrap_timeout")
	p.FetchOptions.AllowHTTP = v.boolean(ps, "crl.allow_http")
	p.FetchOptions.Timeout = v.duration(ps, "crl.fetch_timeout")
	p.FetchOptions.MaxBytes = v.integer(ps, "crl.max_response_bytes")
	p.FetchOptions.UserAgent = v.in.UserAgent
	v.ocspPolicy(ps, &p)
	switch {
	case p.Disabled && len(v.list("crl.files", ",")) > 0:
		ps.at("crl.disable", "given with %s: the CRL files would be ignored; drop one of them", v.Flag("crl.files"))
	case p.Disabled && p.DenyOnUnavailable:
		ps.at("crl.disable", "given with %s: they contradict each other", v.Flag("crl.deny_on_unavailable"))
	default:
		ps.err(p.Validate())
	}
	return p
}

// checkListen checks a host:port to listen on: an IP literal (or empty for
// all addresses, or localhost) and a port; or systemd:NAME, a socket that
// systemd passes (whether it did is known only at start-up).
func checkListen(addr string) error {
	if name, ok := systemd.SocketName(addr); ok {
		return systemd.CheckName(name)
	}
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
