package main

import (
	"fmt"
	"strings"

	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/trust"
)

// Kinds of config_warning, in its warning field.
const (
	warnAllowAll    = "allow_covers_all" // the allowlist admits every IPv4 or every IPv6 address
	warnKeyFileMode = "key_file_mode"    // a key or token file that group or others may read
)

// configWarning is a configuration that works but is probably not what was
// meant. A start (and a reload) logs each as a config_warning line;
// `tunnel check` prints each as a warning.
type configWarning struct {
	kind string // warnAllowAll, warnKeyFileMode
	flag string // the flag it is about, without dashes
	msg  string
}

// allowWarnings warns about an allowlist that admits a whole address
// family, however its prefixes say so.
func allowWarnings(al *netfilter.Allowlist) []configWarning {
	var out []configWarning
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
		out = append(out, configWarning{kind: warnAllowAll, flag: "allow",
			msg: fmt.Sprintf("%s admits every %s address", list, fam.name)})
	}
	return out
}

// keyFileWarnings warns, as ssh refuses, about the private key and the
// admin token file if group or others have access to them.
func keyFileWarnings(c *cli.Context) []configWarning {
	var out []configWarning
	for _, f := range []struct{ flag, what string }{{"key", "private key"}, {"admin-token-file", "admin token"}} {
		path := c.String(f.flag)
		if path == "" {
			continue
		}
		if mode, loose := trust.LooseKeyFile(path); loose {
			out = append(out, configWarning{kind: warnKeyFileMode, flag: f.flag,
				msg: fmt.Sprintf("%s file %q has mode %04o: group or others can access it (chmod 600 it, as ssh requires of private keys)", f.what, path, mode)})
		}
	}
	return out
}

// logWarnings logs each warning as a config_warning line.
func logWarnings(log *logrus.Entry, ws []configWarning) {
	for _, w := range ws {
		log.WithFields(logrus.Fields{audit.Event: audit.ConfigWarning, audit.Warning: w.kind, audit.Flag: "--" + w.flag}).Warn(w.msg)
	}
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
