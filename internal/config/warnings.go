package config

import (
	"fmt"
	"strings"

	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/trust"
)

// Kinds of Warning, logged in the warning field of config_warning.
const (
	WarnAllowAll    = "allow_covers_all" // the allowlist admits every IPv4 or every IPv6 address
	WarnKeyFileMode = "key_file_mode"    // a key or token file that group or others may read
)

// Warning is a configuration that works but is probably not what was
// meant. A start and a reload log each as a config_warning line; `tunnel
// check` prints each.
type Warning struct {
	Kind string // WarnAllowAll, WarnKeyFileMode
	Key  string // the setting it is about
	Msg  string
}

// Warnings are what a start and a reload warn about: an allowlist that
// admits a whole address family, however its prefixes say so, and, as ssh
// refuses, a private key or admin token file that group or others can read.
func (s *Settings) Warnings() []Warning {
	var out []Warning
	if s.Server != nil {
		out = allowWarnings(s.Server.Allow)
		for _, x := range s.Server.Exposes {
			for _, w := range allowWarnings(x.Allow) {
				w.Key, w.Msg = keyExposes, "expose "+x.Name+": "+w.Msg
				out = append(out, w)
			}
		}
	}
	for _, f := range []struct{ key, path, what string }{
		{"tls.key", s.TLS.KeyFile, "private key"}, {"tls.key", s.TLS.PINFile(), "PKCS#11 PIN"},
		{"admin_token_file", s.Admin.TokenFile, "admin token"},
	} {
		if f.path == "" {
			continue
		}
		if mode, loose := trust.LooseKeyFile(f.path); loose {
			out = append(out, Warning{Kind: WarnKeyFileMode, Key: f.key,
				Msg: fmt.Sprintf("%s file %q has mode %04o: group or others can access it (chmod 600 it, as ssh requires of private keys)", f.what, f.path, mode)})
		}
	}
	return append(out, s.identityWarnings()...)
}

func allowWarnings(al *netfilter.Allowlist) []Warning {
	var out []Warning
	for _, fam := range []struct {
		name  string
		v4    bool
		cover bool
	}{{"IPv4", true, al.CoversAllIPv4()}, {"IPv6", false, al.CoversAllIPv6()}} {
		if !fam.cover {
			continue
		}
		var ps []string
		for _, p := range al.Prefixes() {
			if p.Addr().Is4() == fam.v4 {
				ps = append(ps, p.String())
			}
		}
		list := strings.Join(ps, ",")
		if len(ps) > 8 {
			list = strings.Join(ps[:8], ",") + fmt.Sprintf(",... (%d prefixes)", len(ps))
		}
		out = append(out, Warning{Kind: WarnAllowAll, Key: "allow", Msg: fmt.Sprintf("%s admits every %s address", list, fam.name)})
	}
	return out
}

// uncheckedCAWarnings are `tunnel check`'s lines for the intermediates of
// the CA bundle whose issuer the bundle lacks, which start-up logs as one
// ca_unchecked line.
func uncheckedCAWarnings(m *trust.Material, p trust.RevocationPolicy) []string {
	if p.Disabled || p.EndEntityOnly {
		return nil
	}
	var out []string
	for _, c := range m.UncheckedCAs() {
		out = append(out, fmt.Sprintf("%s (serial %s) is an intermediate CA whose issuer is not in the bundle: its revocation cannot be checked (add the issuing CA to the bundle)",
			c.Subject, c.SerialNumber.Text(16)))
	}
	return out
}
