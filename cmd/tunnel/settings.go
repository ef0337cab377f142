package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tunnel-dev/tunnel/client"
	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/reload"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/server"
	"github.com/tunnel-dev/tunnel/trust"
)

// The one table of the settings: each row is a flag (its name gives its key
// in the config file, configKey; its Value the default; its EnvVars the
// environment variable) and the library fields it sets, by which their
// errors name it. internal/config resolves and checks the values; nothing
// else reads the flags.

// setting is one row of the table.
type setting struct {
	flag   cli.Flag
	fields []string // "server.Config.DialTimeout": the fields of FieldErrors that name this setting
}

// env names a setting's environment variable after its flag.
func env(flag string) []string {
	return []string{"TUNNEL_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))}
}

func str(name, value, usage string, fields ...string) setting {
	return setting{&cli.StringFlag{Name: name, Value: value, EnvVars: env(name), Usage: usage}, fields}
}

func list(name, usage string, fields ...string) setting {
	return setting{&cli.StringSliceFlag{Name: name, EnvVars: env(name), Usage: usage}, fields}
}

func boolean(name string, value bool, usage string) setting {
	return setting{&cli.BoolFlag{Name: name, Value: value, EnvVars: env(name), Usage: usage}, nil}
}

func duration(name string, value time.Duration, usage string, fields ...string) setting {
	return setting{&cli.DurationFlag{Name: name, Value: value, EnvVars: env(name), Usage: usage}, fields}
}

func integer(name string, value int, usage string, fields ...string) setting {
	return setting{&cli.IntFlag{Name: name, Value: value, EnvVars: env(name), Usage: usage}, fields}
}

// serverSettings are the server command's settings.
func serverSettings() []setting {
	sc := func(f string) string { return "server.Config." + f }
	return slices.Concat([]setting{
		str("listen", "127.0.0.1:8443", "`ADDR` to accept clients on (IPv4 or [IPv6]:port), or systemd:NAME for the socket systemd passes as FileDescriptorName=NAME"),
		list("allow", "client address `CIDR` or bare IP that may connect (repeatable; required; 0.0.0.0/0 and ::/0 allow all)"),
		list("route", "backend `NAME=HOST:PORT` or NAME=unix:/PATH, then options: ,proxy-v2 (or ,proxy-v1) sends the backend a PROXY v2 (v1) header (repeatable)", sc("Routes")),
		list("expose", "reverse tunnel `LISTEN=NAME,allow=CIDR,publisher=RULE`: connections to LISTEN from an allow address go to a client that publishes NAME and whose certificate matches a publisher rule (both repeatable and required; also ,max-conns-per-addr=N ,max-streams-per-publisher=N; repeatable)", sc("Exposes")),
		str("raw-route", "", "route `NAME` for plain TLS clients that offer no ALPN (stunnel, openssl s_client); without it they are refused", sc("RawRoute")),
		list("proxy-protocol-from", "load balancer `CIDR` whose connections must start with a PROXY v1/v2 header naming the client (repeatable)"),
		duration("proxy-header-timeout", netfilter.DefaultProxyHeaderTimeout, "how long a --proxy-protocol-from upstream may take to send its PROXY header", sc("ProxyHeaderTimeout")),
		duration("first-byte-timeout", server.DefaultFirstByteTimeout, "how long a new connection may stay silent before it is reset; it holds no handshake slot meanwhile", sc("FirstByteTimeout")),
		duration("client-hello-timeout", server.DefaultClientHelloTimeout, "how long the rest of a ClientHello may take after its first byte; it holds no handshake slot meanwhile", sc("ClientHelloTimeout")),
		integer("max-pending", server.DefaultMaxPending, "connections waiting for their ClientHello; when full, the oldest silent one is reset to make room", sc("MaxPending")),
		duration("handshake-timeout", server.DefaultHandshakeTimeout, "limit on one TLS handshake, from the complete ClientHello on", sc("HandshakeTimeout")),
		integer("max-handshakes", server.DefaultMaxHandshakes(), "TLS handshakes in flight, each counted from its complete ClientHello; when all are taken the oldest one waiting on its peer is reset to make room (default 128 x GOMAXPROCS)", sc("MaxHandshakes")),
		duration("dial-timeout", server.DefaultDialTimeout, "limit on one backend dial", sc("DialTimeout")),
		duration("idle-timeout", 0, "close a stream idle this long both ways (0: never)", sc("IdleTimeout")),
		duration("shutdown-timeout", server.DefaultShutdownTimeout, "on SIGINT/SIGTERM, how long open streams may finish", sc("ShutdownTimeout")),
		integer("max-streams", server.DefaultMaxStreamsPerSession, "concurrent streams per client session", sc("MaxStreamsPerSession")),
		integer("max-conns-per-addr", netfilter.DefaultMaxConnsPerAddr, "connections one client address may hold at once, handshakes included; more are reset (0: no cap)", "netfilter.FilterConfig.MaxConnsPerAddr"),
		integer("max-sessions-per-identity", server.DefaultMaxSessionsPerIdentity, "tunnel sessions one client certificate may hold at once", sc("MaxSessionsPerIdentity")),
		integer("max-stream-rate", 0, "stream opens per second per session, burst --max-streams; more get status \"over a limit\" (0: no rate limit; the stream cap and memory budgets bound a session)", sc("StreamRate")),
		str("session-memory", "64MiB", "`SIZE` of stream data one session may hold unread (KiB, MiB, GiB); a stream past it is reset, new ones refused when it is 3/4 full", sc("SessionMemory")),
		str("memory-budget", "256MiB", "`SIZE` of stream data all sessions together may hold unread", sc("MemoryBudget")),
		duration("max-session-lifetime", 0, "end a session gracefully after this long, so rotated certificates take over (0: never)", sc("MaxSessionLifetime")),
	}, serverOCSPSettings(), commonSettings("client CA bundle `FILE`: client certificates must chain to it"))
}

// clientSettings are the client command's settings.
func clientSettings() []setting {
	cc := func(f string) string { return "client.Config." + f }
	return slices.Concat([]setting{
		list("server", "server `HOST:PORT` to dial (required; repeatable: the next one is tried at once when a dial fails)", cc("Server"), cc("Failover")),
		str("server-name", "", "`NAME` the server certificate must carry (default: the host of the --server being dialled)"),
		boolean("raw", false, "plain TLS: one mutual-TLS connection per local connection, no ALPN, no multiplexing (for stunnel, ghostunnel, or a --raw-route)"),
		str("source", "", "local `IP` to dial the servers from (default: chosen by the kernel)"),
		list("forward", "local `[HOST:]PORT=ROUTE` whose connections go to ROUTE (repeatable; a bare port listens on 127.0.0.1; systemd:NAME=ROUTE takes a socket systemd passes)", cc("Forwards")),
		list("publish", "publish the service at `NAME=HOST:PORT` (or NAME=unix:/PATH; ,proxy-v2 sends it a PROXY v2 header) to the server's expose NAME: its inbound connections come here (repeatable)", cc("Publish")),
		integer("publish-max-streams", client.DefaultPublishMaxStreams, "streams the server may have open toward this client at once for its publications; more get status \"over a limit\"", cc("PublishMaxStreams")),
		duration("connect-timeout", client.DefaultConnectTimeout, "how long a local connection waits for the session while it is down", cc("ConnectTimeout")),
		duration("dial-timeout", client.DefaultDialTimeout, "limit on one dial of the server, TCP and TLS, and on one dial of a published target", cc("DialTimeout")),
		duration("keepalive", client.DefaultKeepalive, "session ping interval; a dead server is noticed within this plus --keepalive-timeout", cc("Keepalive")),
		duration("keepalive-timeout", client.DefaultKeepaliveTimeout, "how long a ping may go unanswered before the session is dropped and redialled", cc("KeepaliveTimeout")),
		duration("idle-timeout", 0, "close a stream idle this long both ways (0: never)", cc("IdleTimeout")),
	}, clientIdentitySettings(), commonSettings("server CA bundle `FILE`: the server certificate must chain to it"))
}

// commonSettings are the settings both roles have: TLS files, revocation,
// the admin listener, logging and reloading.
func commonSettings(caUsage string) []setting {
	src := func(f string) string { return "trust.Sources." + f }
	pol := func(f string) string { return "trust.RevocationPolicy." + f }
	d := trust.DefaultRevocationPolicy()
	return []setting{
		str("cert", "", "certificate `FILE` (PEM, leaf first, chain may follow)", src("CertFile")),
		str("key", "", "private key `FILE` (PEM), or a pkcs11: URI of a key in a token (docs/IDENTITY.md; needs make build-pkcs11)", src("KeyFile")),
		str("ca", "", caUsage, src("CAFile")),
		str("spiffe-socket", "", "SPIFFE Workload API `ADDR` (unix:///run/spire/agent.sock, an absolute socket path, or tcp://IP:PORT): take the certificate, key and CA bundles from the agent instead of --cert, --key and --ca, rotated live; "+
			config.EnvSPIFFEEndpointSocket+" is used when none of the four is given", "trust.SPIFFEConfig.Addr"),
		str("spiffe-id", "", "the workload's own SPIFFE `ID` to use when the agent issues it several X.509-SVIDs (default: the first)"),
		duration("spiffe-start-timeout", trust.DefaultSPIFFEStartTimeout, "at start-up (and in tunnel check), how long to wait for the SPIFFE agent's first X.509-SVID before giving up"),
		list("crl", "CRL `FILE` (PEM or DER; repeatable), re-read on SIGHUP", src("CRLFiles")),
		boolean("crl-disable", false, "turn revocation checking off entirely (logged loudly at start-up)"),
		boolean("crl-fetch", d.Fetch, "fetch CRLs from the CRL Distribution Points of the CA chain and of peer certificates"),
		boolean("crl-end-entity-only", false, "check only the peer's leaf, not its intermediates"),
		boolean("crl-deny-on-unavailable", false, "fail closed: refuse a certificate whose CRL cannot be had (default: allow with a crl_unavailable warning)"),
		boolean("crl-enforce-expiration", d.EnforceExpiration, "use a CRL past its nextUpdate only within --crl-stale-grace"),
		duration("crl-stale-grace", d.StaleGrace, "how long an expired CRL is still used while it is refetched", pol("StaleGrace")),
		duration("crl-refresh-interval", 0, "refetch every CRL this often (0: before each CRL's nextUpdate, clamped to [10m, 24h])", pol("RefreshInterval")),
		boolean("crl-allow-http", d.FetchOptions.AllowHTTP, "fetch plain http Distribution Points (CRLs are signed, so this is the norm)"),
		duration("crl-fetch-timeout", d.FetchOptions.Timeout, "limit on one CRL fetch, connect to last byte", pol("FetchOptions.Timeout")),
		{&cli.Int64Flag{Name: "crl-max-response-bytes", Value: d.FetchOptions.MaxBytes, EnvVars: env("crl-max-response-bytes"), Usage: "largest CRL response accepted; a larger one is aborted"}, []string{pol("FetchOptions.MaxBytes")}},
		duration("crl-bootstrap-timeout", d.BootstrapTimeout, "at start-up, how long to wait for the CA chain's CRLs, all together", pol("BootstrapTimeout")),
		str("admin", "", "serve /metrics, /healthz, /readyz, /status, POST /reload, POST /crl/refresh and POST /sessions/ID/close on `ADDR` (off by default; loopback only unless --admin-allow-remote)"),
		boolean("admin-allow-remote", false, "let --admin listen on a non-loopback address (requires --admin-token-file)"),
		str("admin-token-file", "", "`FILE` holding a bearer token that every admin request but /healthz and /readyz must carry (re-read on reload)"),
		str("log-format", "text", "log format: text or json"),
		str("log-level", "info", "log level: debug, info, warn or error"),
		{configFileFlag(), nil},
		duration("reload-interval", reload.DefaultInterval, "re-read the certificate, key, CA, CRL and config files this often even without a file event (0: only on events and SIGHUP)", "reload.Config.Interval"),
	}
}

// serverOCSPSettings are the server's OCSP settings: checking client
// chains, and stapling its own status (docs/REVOCATION.md).
func serverOCSPSettings() []setting {
	return []setting{
		str("revocation", trust.RevocationCRL, "where client certificates' revocation status comes from: crl, ocsp, both or prefer-ocsp (OCSP from the responder each certificate's AIA names; the --crl-* fail-open/closed and fetch settings apply)", "trust.RevocationPolicy.Method"),
		boolean("ocsp-get", false, "send OCSP requests by GET without a nonce (RFC 5019), for responders that answer only GET; otherwise POST with a nonce"),
		boolean("ocsp-staple", false, "staple an OCSP response for the server's own certificate, fetched from its issuer's responder and renewed before its nextUpdate"),
		str("ocsp-staple-file", "", "staple the OCSP response in `FILE` (DER, or PEM \"OCSP RESPONSE\") instead; re-read on reload"),
	}
}

// clientIdentitySettings are the client's checks of the server beyond its
// chain: its SPIFFE ID, its OCSP staple.
func clientIdentitySettings() []setting {
	return []setting{
		str("server-spiffe-id", "", "SPIFFE `ID` the server's certificate must carry as its only URI SAN, in place of --server-name (SVIDs rarely carry a DNS name)"),
		boolean("require-ocsp-staple", false, "refuse a server that staples no OCSP response (a stapled one is always verified, and a must-staple certificate always needs one)"),
	}
}

// flagsOf returns the flags of settings, in order.
func flagsOf(settings []setting) []cli.Flag {
	out := make([]cli.Flag, len(settings))
	for i, s := range settings {
		out[i] = s.flag
	}
	return out
}

// configFlagName is the flag that names the config file; it has no key.
const configFlagName = "config"

// configFileFlag is the --config flag of the server and client commands.
func configFileFlag() cli.Flag {
	return &cli.StringFlag{Name: configFlagName, EnvVars: []string{"TUNNEL_CONFIG"},
		Usage: "YAML config `FILE` (docs/CONFIG.md): every flag has a key; flags and TUNNEL_* variables override it; re-read when it changes and on SIGHUP"}
}

// configSections are the nested mappings of a config file: a flag named
// "SECTION-REST" has the key SECTION.REST.
var configSections = []string{"tls", "crl", "log", "reload", "spiffe", "ocsp"}

// configKeyOverrides are the flags whose key is not derived from the name.
var configKeyOverrides = map[string]string{
	"cert":    "tls.cert",
	"key":     "tls.key",
	"ca":      "tls.ca",
	"crl":     "crl.files",
	"route":   "routes",
	"forward": "forwards",
	"expose":  "exposes",

	"require-ocsp-staple": "ocsp.require_staple",
}

// configKey returns the config file key of the flag named name, as a dotted
// path ("tls.cert", "handshake_timeout"), or "" if it has none: so a new
// flag gets a key without anyone writing one.
func configKey(name string) string {
	if name == configFlagName || name == "help" {
		return ""
	}
	if k, ok := configKeyOverrides[name]; ok {
		return k
	}
	for _, s := range configSections {
		if rest, ok := strings.CutPrefix(name, s+"-"); ok {
			return s + "." + strings.ReplaceAll(rest, "-", "_")
		}
	}
	return strings.ReplaceAll(name, "-", "_")
}

// kindOf returns how the value of f is written, or an error for a flag
// type the config file does not support yet.
func kindOf(f cli.Flag) (config.Kind, error) {
	switch f.(type) {
	case *cli.StringFlag, *cli.PathFlag:
		return config.String, nil
	case *cli.StringSliceFlag:
		return config.List, nil
	case *cli.BoolFlag:
		return config.Bool, nil
	case *cli.DurationFlag:
		return config.Duration, nil
	case *cli.IntFlag, *cli.Int64Flag:
		return config.Int, nil
	case *cli.UintFlag, *cli.Uint64Flag:
		return config.Uint, nil
	case *cli.Float64Flag:
		return config.Float, nil
	}
	return 0, fmt.Errorf("flag --%s: type %T has no config file support (add it to kindOf in cmd/tunnel/settings.go)", f.Names()[0], f)
}

// captureInput records the command line and environment of c, the command
// of one of the roles, once: nothing it returns refers to c, so the
// settings can be resolved again at every reload on another goroutine.
func captureInput(c *cli.Context, role string, table []setting) (*config.Input, error) {
	if c.Args().Len() > 0 {
		return nil, &configError{err: fmt.Errorf("unexpected argument %q", c.Args().First())}
	}
	in := &config.Input{Role: role, Given: map[string][]string{}, FileFlag: "--" + configFlagName,
		UserAgent: "tunnel/" + version + " crl-fetcher", SPIFFEEndpointSocket: os.Getenv(config.EnvSPIFFEEndpointSocket)}
	for _, row := range table {
		name := row.flag.Names()[0]
		var vals []string
		if _, ok := row.flag.(*cli.StringSliceFlag); ok {
			vals = slices.Clone(c.StringSlice(name))
		} else {
			vals = []string{fmt.Sprint(c.Value(name))}
		}
		key := configKey(name)
		if key == "" {
			if name == configFlagName && c.IsSet(name) {
				if in.File = vals[0]; in.File == "" {
					return nil, flagError("--config", "empty file name")
				}
			}
			continue
		}
		kind, err := kindOf(row.flag)
		if err != nil {
			return nil, err // TestEveryFlagHasAConfigKey fails first
		}
		st := config.Setting{Key: key, Flag: "--" + name, Kind: kind, Fields: row.fields}
		if c.IsSet(name) {
			in.Given[key] = vals
		} else if len(vals) > 0 {
			st.Default = vals
		}
		in.Settings = append(in.Settings, st)
	}
	return in, nil
}
