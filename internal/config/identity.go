package config

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tunnel-dev/tunnel/trust"
)

// The settings of the production identity sources (docs/IDENTITY.md): where
// a role's certificate, key and CA bundles come from (files, or the SPIFFE
// Workload API), the client's server SPIFFE ID, and OCSP: where revocation
// status comes from, stapling, a required staple.

// EnvSPIFFEEndpointSocket is the standard variable naming the SPIFFE
// Workload API; problems with its value name it.
const EnvSPIFFEEndpointSocket = "SPIFFE_ENDPOINT_SOCKET"

// Kinds of Warning about identity and OCSP, beside WarnAllowAll and
// WarnKeyFileMode.
const (
	// WarnSPIFFEEnvIgnored: SPIFFE_ENDPOINT_SOCKET is set, but the TLS files
	// are given, and they are what is used.
	WarnSPIFFEEnvIgnored = "spiffe_env_ignored"
	// WarnOCSPURLRefused: a CA of the bundle names an OCSP responder that
	// the fetcher will not ask (its URL or address is refused).
	WarnOCSPURLRefused = "ocsp_url_refused"
)

// tlsFileKeys are the settings SPIFFE material replaces.
var tlsFileKeys = []string{"tls.cert", "tls.key", "tls.ca"}

// has reports whether the role has the setting key at all.
func (v *Values) has(key string) bool { _, ok := v.byKey[key]; return ok }

// set reports whether key's value was given (command line, environment)
// or came from the config file, rather than being the default.
func (v *Values) set(key string) bool {
	_, given := v.in.Given[key]
	return given || v.fromFile(key)
}

// spiffeSettings returns the Workload API the material comes from, or nil
// for files, and whether the TLS files are to be loaded. A socket given
// (flag, TUNNEL_SPIFFE_SOCKET, spiffe.socket) together with a TLS file is a
// problem; SPIFFE_ENDPOINT_SOCKET alone counts only when no TLS file is
// given, since it is often set for a whole pod or host: given files win
// (and Warnings says so).
func (v *Values) spiffeSettings(ps *problems) (cfg *trust.SPIFFEConfig, loadFiles bool) {
	if !v.has("spiffe.socket") {
		return nil, true
	}
	var files []string
	for _, k := range tlsFileKeys {
		if v.text(k) != "" {
			files = append(files, v.Where(k))
		}
	}
	addr, fromEnv := v.text("spiffe.socket"), false
	if addr == "" && len(files) == 0 && v.in.SPIFFEEndpointSocket != "" {
		addr, fromEnv = v.in.SPIFFEEndpointSocket, true
	}
	if addr == "" {
		for _, k := range []string{"spiffe.id", "spiffe.start_timeout"} {
			if v.set(k) {
				ps.at(k, "given without %s: there is no SPIFFE Workload API to take an SVID from", v.Flag("spiffe.socket"))
			}
		}
		return nil, true
	}
	if len(files) > 0 {
		ps.at("spiffe.socket", "given with %s: the certificate, key and CA bundles come from the SPIFFE Workload API instead; drop one or the other",
			strings.Join(files, ", "))
		return nil, false
	}
	if crls := v.list("crl.files", ","); len(crls) > 0 {
		ps.at("crl.files", "given with %s: CRL files come with file material; SPIFFE trust bundles carry none (drop them, or use --cert, --key and --ca)",
			v.Flag("spiffe.socket"))
	}
	resolved, err := trust.CheckSPIFFEAddr(addr)
	if err != nil {
		if fromEnv {
			ps.add(Problem{Key: EnvSPIFFEEndpointSocket, Msg: err.Error()})
		} else {
			ps.at("spiffe.socket", "%v", err)
		}
		return nil, false
	}
	cfg = &trust.SPIFFEConfig{Addr: resolved, StartTimeout: v.duration(ps, "spiffe.start_timeout")}
	if cfg.StartTimeout <= 0 {
		ps.at("spiffe.start_timeout", "%v is not a positive duration: the wait for the agent must end", cfg.StartTimeout)
	}
	if id := v.text("spiffe.id"); id != "" {
		if _, err := spiffeid.FromString(id); err != nil {
			ps.at("spiffe.id", "%q is not a SPIFFE ID (spiffe://TRUST-DOMAIN/PATH): %v", truncate(id, 200), err)
		}
		cfg.ID = id
	}
	return cfg, false
}

// serverIdentity reads the server's OCSP stapling settings into s.
func (v *Values) serverIdentity(ps *problems, s *Server) {
	s.OCSPStaple = v.boolean(ps, "ocsp.staple")
	s.OCSPStapleFile = v.text("ocsp.staple_file")
	if s.OCSPStaple && s.OCSPStapleFile != "" {
		ps.at("ocsp.staple", "given with %s: staple the response fetched from the responder or the file's; drop one", v.Flag("ocsp.staple_file"))
	}
}

// clientIdentity reads the client's server SPIFFE ID and staple
// requirement into c.
func (v *Values) clientIdentity(ps *problems, c *Client) {
	c.RequireOCSPStaple = v.boolean(ps, "ocsp.require_staple")
	id := v.text("server_spiffe_id")
	if id == "" {
		return
	}
	sid, err := spiffeid.FromString(id)
	if err != nil {
		ps.at("server_spiffe_id", "%q is not a SPIFFE ID (spiffe://TRUST-DOMAIN/PATH): %v", truncate(id, 200), err)
		return
	}
	if c.Config.ServerName != "" {
		ps.at("server_name", "given with %s: the server is known by its SPIFFE ID, not by a name; drop one", v.Flag("server_spiffe_id"))
	}
	c.ServerSPIFFEID = sid
}

// ocspPolicy reads the server's OCSP settings into p and checks them
// against the CRL ones.
func (v *Values) ocspPolicy(ps *problems, p *trust.RevocationPolicy) {
	if !v.has("revocation") {
		return // the client takes status from CRLs only
	}
	m, err := trust.ParseRevocationMethod(v.text("revocation"))
	if err != nil {
		ps.at("revocation", "%q is not crl, ocsp, both or prefer-ocsp", truncate(v.text("revocation"), 40))
	}
	p.Method = m
	p.OCSPGET = v.boolean(ps, "ocsp.get")
	stapling := v.text("ocsp.staple") == "true" || v.text("ocsp.staple_file") != ""
	switch {
	case err != nil:
	case p.Disabled && p.Method != trust.RevocationCRL:
		ps.at("crl.disable", "given with %s %s: they contradict each other", v.Flag("revocation"), p.Method)
	case p.Method == trust.RevocationOCSP && len(v.list("crl.files", ",")) > 0:
		ps.at("crl.files", "given with %s ocsp, which does not look at CRLs (use both or prefer-ocsp, or drop the files)", v.Flag("revocation"))
	case p.OCSPGET && (p.Disabled || p.Method == trust.RevocationCRL) && !stapling:
		ps.at("ocsp.get", "given without OCSP (%s ocsp, both or prefer-ocsp, or %s): no OCSP request is made", v.Flag("revocation"), v.Flag("ocsp.staple"))
	}
}

// WithMaterial returns a copy of s whose Material is m: the material of a
// live source (the SPIFFE Workload API), which Settings cannot load. s is
// not modified.
func (s *Settings) WithMaterial(m *trust.Material) *Settings {
	c := *s
	c.Material = m
	return &c
}

// identityWarnings are the warnings about the identity source and OCSP.
func (s *Settings) identityWarnings() []Warning {
	var out []Warning
	v := s.Values
	if s.SPIFFE == nil && v.in.SPIFFEEndpointSocket != "" && v.has("spiffe.socket") {
		out = append(out, Warning{Kind: WarnSPIFFEEnvIgnored, Key: "tls.cert",
			Msg: fmt.Sprintf("%s is set but the TLS files are given: they are used, not the SPIFFE Workload API (give %s to use it)",
				EnvSPIFFEEndpointSocket, v.Flag("spiffe.socket"))})
	}
	if s.Material == nil || s.Revocation.Disabled || s.Revocation.Method == "" || s.Revocation.Method == trust.RevocationCRL {
		return out
	}
	seen := map[string]bool{}
	for _, c := range s.Material.CACerts {
		for _, u := range c.OCSPServer {
			if seen[u] {
				continue
			}
			seen[u] = true
			if reason, err := trust.CheckFetchURL(u, s.Revocation.FetchOptions); reason != "" {
				out = append(out, Warning{Kind: WarnOCSPURLRefused, Key: "tls.ca",
					Msg: fmt.Sprintf("%s (serial %s) names OCSP responder %q, which will not be asked (%v): its status counts as unavailable",
						c.Subject, c.SerialNumber.Text(16), truncate(u, 200), err)})
			}
		}
	}
	return out
}

// caKey is the setting that names where the CA bundle came from: tls.ca,
// or spiffe.socket for SPIFFE bundles.
func (s *Settings) caKey() string {
	if s.SPIFFE != nil {
		return "spiffe.socket"
	}
	return "tls.ca"
}

// certKey is the setting that names where the role's certificate came from.
func (s *Settings) certKey() string {
	if s.SPIFFE != nil {
		return "spiffe.socket"
	}
	return "tls.cert"
}

// spiffeSummary is `tunnel check`'s line of SPIFFE material.
func spiffeSummary(cfg *trust.SPIFFEConfig, m *trust.Material) string {
	if m == nil || m.SPIFFE == nil {
		return cfg.Addr
	}
	var tds []string
	for _, b := range m.SPIFFE.Bundles.Bundles() {
		tds = append(tds, b.TrustDomain().Name())
	}
	slices.Sort(tds)
	return fmt.Sprintf("%s: %s, bundles of %s", cfg.Addr, m.SPIFFE.ID, strings.Join(tds, ", "))
}

// truncate cuts s to at most n bytes for a message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
