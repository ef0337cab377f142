package config

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tunnel-dev/tunnel/client"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/server"
)

// Server is the server role's own settings.
type Server struct {
	Listen          string
	Allow           *netfilter.Allowlist
	MaxConnsPerAddr int
	// OCSPStaple staples an OCSP response for the server's certificate,
	// fetched from its issuer's responder; OCSPStapleFile staples the
	// response in that file instead (re-read on reload). At most one.
	OCSPStaple     bool
	OCSPStapleFile string
	// Exposes are the reverse tunnels, each with the address its listener
	// binds; Config.Exposes holds the same, without the addresses.
	Exposes []Expose
	// Config is all of the server's Config but what the running process
	// supplies: Trust, Revocation, TLS, Filter and Log.
	Config server.Config
}

// Expose is one expose: the address the process binds for it, and its
// rules.
type Expose struct {
	Listen string
	server.Expose
}

// Client is the client role's own settings.
type Client struct {
	// ServerSPIFFEID, if set, is the SPIFFE ID the server's certificate
	// must carry, in place of a server name.
	ServerSPIFFEID spiffeid.ID
	// RequireOCSPStaple refuses a server that staples no OCSP response.
	RequireOCSPStaple bool
	// Config is all of the client's Config but what the running process
	// supplies: Trust, Revocation, TLS and Log.
	Config client.Config
}

// reloadable are the settings a reload applies (server.State,
// client.State), by role; a change to any other takes a restart.
// (exposes: their rules; see RestartNeeded for the rest of them.)
var reloadable = map[string][]string{
	"server": {"tls.cert", "tls.key", "tls.ca", "crl.files", "allow", keyRoutes, keyExposes},
	"client": {"tls.cert", "tls.key", "tls.ca", "crl.files", keyForwards, keyPublish},
}

// ServerState is what a reload of a running server applies.
func (s *Settings) ServerState() server.State {
	return server.State{Material: s.Material, Allowlist: s.Server.Allow, Routes: s.Server.Config.Routes, Exposes: s.Server.Config.Exposes}
}

// ClientState is what a reload of a running client applies.
func (s *Settings) ClientState() client.State {
	return client.State{Material: s.Material, Forwards: s.Client.Config.Forwards, Publish: s.Client.Config.Publish}
}

// RestartNeeded returns the keys whose values differ from running's that a
// reload does not apply: they take effect only after a restart. A reload
// applies the rules of the exposes the server runs; exposes added, moved
// to another address or given another per-address cap need a restart
// (exposes is then listed too).
func (s *Settings) RestartNeeded(running *Settings) []string {
	out := s.Values.Changed(running.Values, reloadable[s.Role])
	if s.Server != nil && running.Server != nil && !slices.Equal(exposeListeners(s.Server), exposeListeners(running.Server)) {
		out = append(out, keyExposes)
	}
	return out
}

// exposeListeners are what of s's exposes a restart binds: name, address
// and per-address cap, sorted. (A reload withdraws an expose removed, but
// its listener stays bound, resetting every connection, until a restart.)
func exposeListeners(s *Server) []string {
	var out []string
	for _, x := range s.Exposes {
		out = append(out, fmt.Sprintf("%s@%s#%d", x.Name, x.Listen, x.MaxConnsPerAddr))
	}
	slices.Sort(out)
	return out
}

// RoutesReplaced reports whether routes given as flags replaced the config
// file's, whose rules are then not used.
func (s *Settings) RoutesReplaced() bool {
	f := s.Values.file
	return f != nil && f.ruled && f.access == nil
}

// serverSettings are the server's own settings. Library rules (negative
// durations and limits, the raw route) are server.New's; these are the
// settings': what is required, how values are written, and that a value
// shown as the default is never 0, which a Config reads as "the default".
func (v *Values) serverSettings(ps *problems) *Server {
	s := &Server{Listen: v.text("listen")}
	if err := checkListen(s.Listen); err != nil {
		ps.at("listen", "%q: %v", s.Listen, err)
	}
	if allow := v.list("allow", ","); len(allow) == 0 {
		ps.at("allow", "required: name the client addresses that may connect (%[1]s 0.0.0.0/0 %[1]s ::/0 allows every address)", v.Flag("allow"))
	} else if al, err := netfilter.ParseAllowlist(allow); err != nil {
		ps.at("allow", "%v", err)
	} else {
		s.Allow = al
	}
	cfg := &s.Config
	specs := v.list(keyRoutes, "")
	for _, spec := range specs {
		r, err := server.ParseRoute(spec)
		if err != nil {
			ps.at(keyRoutes, "%v", err)
			continue
		}
		if v.file != nil {
			r.Access = v.file.access[r.Name] // allow_identities and allow of the config file
		}
		cfg.Routes = append(cfg.Routes, r)
	}
	exposes := v.list(keyExposes, "")
	for _, spec := range exposes {
		listen, x, err := server.ParseExpose(spec)
		if err != nil {
			ps.at(keyExposes, "%v", err)
			continue
		}
		s.Exposes = append(s.Exposes, Expose{Listen: listen, Expose: x})
		cfg.Exposes = append(cfg.Exposes, x)
	}
	if len(specs) == 0 && len(exposes) == 0 {
		ps.at(keyRoutes, "required: at least one NAME=HOST:PORT (or an expose, %s)", v.Flag(keyExposes))
	}
	cfg.RawRoute = v.text("raw_route")
	if from := v.list("proxy_protocol_from", ","); len(from) > 0 {
		up, err := netfilter.ParseAllowlist(from)
		if err != nil {
			ps.at("proxy_protocol_from", "%v", err)
		}
		cfg.ProxyProtocolFrom = up
	}
	v.durations(ps, keyed[time.Duration]{
		{"proxy_header_timeout", &cfg.ProxyHeaderTimeout}, {"idle_timeout", &cfg.IdleTimeout},
		{"shutdown_timeout", &cfg.ShutdownTimeout}, {"max_session_lifetime", &cfg.MaxSessionLifetime},
	})
	for _, d := range v.durations(ps, keyed[time.Duration]{{"first_byte_timeout", &cfg.FirstByteTimeout}, {"client_hello_timeout", &cfg.ClientHelloTimeout}}) {
		if *d.v <= 0 { // every wait on a peer has a deadline
			ps.at(d.key, "%v is not a positive duration", *d.v)
		}
	}
	for _, d := range v.durations(ps, keyed[time.Duration]{{"handshake_timeout", &cfg.HandshakeTimeout}, {"dial_timeout", &cfg.DialTimeout}}) {
		if *d.v == 0 {
			ps.at(d.key, "must be positive")
		}
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = time.Nanosecond // 0 on the command line: do not wait
	}
	limits := keyed[int]{
		{"max_pending", &cfg.MaxPending}, {"max_handshakes", &cfg.MaxHandshakes},
		{"max_streams", &cfg.MaxStreamsPerSession}, {"max_sessions_per_identity", &cfg.MaxSessionsPerIdentity},
	}
	for _, n := range limits {
		if *n.v = int(v.integer(ps, n.key)); *n.v < 1 {
			ps.at(n.key, "%d is not a positive number", *n.v)
		}
	}
	cfg.StreamRate = int(v.integer(ps, "max_stream_rate"))
	s.MaxConnsPerAddr = int(v.integer(ps, "max_conns_per_addr"))
	var err error
	if cfg.SessionMemory, err = parseSize(v.text("session_memory")); err != nil {
		ps.at("session_memory", "%v", err)
	}
	if cfg.MemoryBudget, err = parseSize(v.text("memory_budget")); err != nil {
		ps.at("memory_budget", "%v", err)
	}
	if cfg.SessionMemory > cfg.MemoryBudget && cfg.MemoryBudget > 0 {
		ps.at("session_memory", "%s is more than %s %s", v.text("session_memory"), v.Flag("memory_budget"), v.text("memory_budget"))
	}
	v.serverIdentity(ps, s)
	return s
}

// clientSettings are the client's own settings; client.New checks the
// servers' addresses and the forwards' values.
func (v *Values) clientSettings(ps *problems) *Client {
	c := &Client{}
	cfg := &c.Config
	servers := v.list("server", ",")
	if len(servers) == 0 {
		ps.at("server", "required: the server's HOST:PORT")
	} else {
		cfg.Server, cfg.Failover = servers[0], slices.Clip(servers[1:])
	}
	cfg.ServerName = v.text("server_name") // empty: each dial checks the host it dialled
	cfg.Raw = v.boolean(ps, "raw")
	if src := v.text("source"); src != "" {
		ip, err := netip.ParseAddr(src)
		if err != nil || ip.Zone() != "" {
			ps.at("source", "%q is not an IP address", src)
		}
		cfg.Source = ip
	}
	specs := v.list(keyForwards, ",")
	for _, spec := range specs {
		f, err := client.ParseForward(spec)
		if err != nil {
			ps.at(keyForwards, "%v", err)
			continue
		}
		cfg.Forwards = append(cfg.Forwards, f)
	}
	pubs := v.list(keyPublish, "")
	for _, spec := range pubs {
		p, err := client.ParsePublish(spec)
		if err != nil {
			ps.at(keyPublish, "%v", err)
			continue
		}
		cfg.Publish = append(cfg.Publish, p)
	}
	if len(specs) == 0 && len(pubs) == 0 {
		ps.at(keyForwards, "required: at least one [HOST:]PORT=ROUTE (or a publication, %s)", v.Flag(keyPublish))
	}
	if cfg.PublishMaxStreams = int(v.integer(ps, "publish_max_streams")); cfg.PublishMaxStreams < 1 {
		ps.at("publish_max_streams", "%d is not a positive number", cfg.PublishMaxStreams)
	}
	v.durations(ps, keyed[time.Duration]{
		{"connect_timeout", &cfg.ConnectTimeout}, {"dial_timeout", &cfg.DialTimeout},
		{"keepalive", &cfg.Keepalive}, {"keepalive_timeout", &cfg.KeepaliveTimeout}, {"idle_timeout", &cfg.IdleTimeout},
	})
	v.clientIdentity(ps, c)
	return c
}

// keyed are settings and where their typed values go, in order.
type keyed[T any] []struct {
	key string
	v   *T
}

// durations reads each duration setting of ds into its place, and returns ds.
func (v *Values) durations(ps *problems, ds keyed[time.Duration]) keyed[time.Duration] {
	for _, d := range ds {
		*d.v = v.duration(ps, d.key)
	}
	return ds
}
