package config

import (
	"crypto/x509"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/tunnel-dev/tunnel/netfilter"
)

// expiryWarning is how close to its notAfter a certificate makes the
// summary warn.
const expiryWarning = 7 * 24 * time.Hour

// WriteSummary writes `tunnel check`'s account of s to w: what the role
// will do, its certificates with their expiry, and every warning, each
// naming the key or flag it is about.
func (s *Settings) WriteSummary(w io.Writer) {
	sw := &summary{out: w, v: s.Values}
	src := "flags"
	if s.File != "" {
		src = s.File
	}
	fmt.Fprintf(w, "%s configuration OK (%s)\n", s.Role, src)
	switch {
	case s.Server != nil:
		sw.server(s)
	case s.Client != nil:
		c := s.Client.Config
		sw.line("server", strings.Join(append([]string{c.Server}, c.Failover...), ", "))
		if c.ServerName != "" {
			sw.line("server name", c.ServerName)
		}
		if id := s.Client.ServerSPIFFEID; !id.IsZero() {
			sw.line("server id", id.String())
		}
		if s.Client.RequireOCSPStaple {
			sw.line("ocsp staple", "required of the server")
		}
		for _, f := range c.Forwards {
			sw.line("forward", f.Listen+" -> route "+f.Route)
		}
		for _, p := range c.Publish {
			opts := ""
			if p.ProxyV2 {
				opts = " (proxy-v2)"
			}
			sw.line("publish", p.Name+" -> "+p.Target+opts)
		}
	}
	sw.trust(s)
	for _, wn := range s.Warnings() {
		if wn.Kind != WarnAllowAll { // listed with the allowlist
			sw.warn(sw.v.Where(wn.Key), wn.Msg)
		}
	}
}

// summary writes the lines of WriteSummary.
type summary struct {
	out io.Writer
	v   *Values
}

func (sw *summary) line(what, v string) { fmt.Fprintf(sw.out, "  %-12s %s\n", what, v) }

func (sw *summary) warn(where, msg string) { fmt.Fprintf(sw.out, "warning: %s: %s\n", where, msg) }

func (sw *summary) server(s *Settings) {
	sv := s.Server
	sw.line("listen", sv.Listen)
	sw.line("allow", fmt.Sprintf("%d prefix(es): %s", sv.Allow.Len(), sv.Allow.String()))
	for _, wn := range allowWarnings(sv.Allow) {
		sw.warn(sw.v.Where(wn.Key), wn.Msg)
	}
	for _, r := range sv.Config.Routes {
		opts := ""
		switch {
		case r.ProxyV1:
			opts = " (proxy-v1)"
		case r.ProxyV2:
			opts = " (proxy-v2)"
		}
		sw.line("route", fmt.Sprintf("%s -> %s%s: %s", r.Name, r.Target, opts, r.Access))
		if r.Access != nil && r.Access.Allow != nil && !overlaps(r.Access.Allow, sv.Allow) {
			sw.warn(sw.v.file.routes[r.Name]+".allow", "admits no address the listener allows: the route is closed to everyone")
		}
	}
	for _, x := range sv.Exposes {
		caps := ""
		if x.MaxConnsPerAddr > 0 {
			caps += fmt.Sprintf("; %d connections per address", x.MaxConnsPerAddr)
		}
		if x.MaxStreamsPerPublisher > 0 {
			caps += fmt.Sprintf("; %d streams per publisher", x.MaxStreamsPerPublisher)
		}
		sw.line("expose", fmt.Sprintf("%s -> publishers of %s: allow %s; publishers %s%s", x.Listen, x.Name, x.Allow, x.Publishers, caps))
		for _, wn := range allowWarnings(x.Allow) {
			sw.warn(sw.v.Where(keyExposes), "expose "+x.Name+": "+wn.Msg)
		}
	}
	if sv.Config.RawRoute != "" {
		sw.line("raw route", sv.Config.RawRoute)
	}
	if sv.Config.ProxyProtocolFrom != nil {
		sw.line("proxy from", sv.Config.ProxyProtocolFrom.String())
	}
	switch {
	case sv.OCSPStaple:
		sw.line("ocsp staple", "fetched from the certificate's responder")
	case sv.OCSPStapleFile != "":
		sw.line("ocsp staple", "from "+sv.OCSPStapleFile)
	}
	if s.RoutesReplaced() {
		sw.warn(sw.v.Flag(keyRoutes), "replaces the config file's routes and their allow_identities/allow rules")
	}
}

// overlaps reports whether some address is in both lists.
func overlaps(a, b *netfilter.Allowlist) bool {
	for _, p := range a.Prefixes() {
		for _, q := range b.Prefixes() {
			if p.Overlaps(q) {
				return true
			}
		}
	}
	return false
}

// trust lists the certificates with their expiry, warning about those that
// expire within expiryWarning and about intermediates of the CA bundle
// whose revocation the policy cannot check.
func (sw *summary) trust(s *Settings) {
	m := s.Material
	if s.SPIFFE != nil {
		sw.line("identity", "SPIFFE Workload API "+spiffeSummary(s.SPIFFE, m))
	}
	sw.line("revocation", s.Revocation.Summary(len(s.TLS.CRLFiles)))
	if m == nil {
		return
	}
	cert := func(what, key string, c *x509.Certificate) {
		sw.line(what, fmt.Sprintf("%s, serial %s, expires %s", c.Subject, c.SerialNumber.Text(16), c.NotAfter.UTC().Format(time.RFC3339)))
		switch left := time.Until(c.NotAfter); {
		case left <= 0:
			sw.warn(key, fmt.Sprintf("%s expired %s", c.Subject, c.NotAfter.UTC().Format(time.RFC3339)))
		case left < expiryWarning && s.SPIFFE == nil: // SVIDs live hours and rotate by themselves
			sw.warn(key, fmt.Sprintf("%s expires in %s", c.Subject, left.Round(time.Hour)))
		}
	}
	cert("certificate", sw.v.Where(s.certKey()), m.Certificate.Leaf)
	for _, ca := range m.CACerts {
		cert("ca", sw.v.Where(s.caKey()), ca)
	}
	for _, msg := range uncheckedCAWarnings(m, s.Revocation) {
		sw.warn(sw.v.Where(s.caKey()), msg)
	}
	if n := len(m.CRLs); n > 0 {
		sw.line("crl files", fmt.Sprintf("%d CRL(s) from %s", n, strings.Join(m.Sources.CRLFiles, ", ")))
	}
}
