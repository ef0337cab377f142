package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"
	"go.yaml.in/yaml/v3"

	"github.com/tunnel-dev/tunnel/client"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/server"
	"github.com/tunnel-dev/tunnel/trust"
)

// expiryWarning is how close to its notAfter a certificate makes `tunnel
// check` warn.
const expiryWarning = 7 * 24 * time.Hour

// checkCommand is `tunnel check`: it takes the flags of the role the config
// file is for, so its flag parsing is done by a role command built here.
func checkCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:      "check",
		Usage:     "load a server or client configuration as a start would and summarise it, or list every problem",
		ArgsUsage: "[flags of that role]",
		Description: `Loads everything a start would (config file, certificates, keys, CA
   bundles, CRL files, CIDRs, routes and their rules) and prints a summary with
   warnings (a certificate that expires within 7 days, an allowlist that admits
   every IPv4 or IPv6 address however written, a key file others can read, a
   bundle intermediate whose revocation cannot be checked), then exits 0. Otherwise it prints every problem found, one
   per line with the file, line and key (or the flag) at fault, and exits 2.
   The role is the config file's (a file with routes or listen is a server's,
   one with forwards or server a client's); --role overrides the guess. Flags
   of that role override the file as they do at start-up: see
   tunnel server --help and tunnel client --help.

Example:
   tunnel check --config /etc/tunnel/server.yaml
   tunnel check --role client --config client.yaml --forward 15432=db`,
		// The role's command parses the flags (runCheck); these two are
		// listed for the help, the man page and completion.
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "role", Usage: "the configuration's `ROLE`, server or client (default: guessed from the config file's keys, then from the flags)"},
			&cli.StringFlag{Name: configFlagName, EnvVars: []string{"TUNNEL_CONFIG"}, Usage: "the YAML config `FILE` to check"},
		},
		SkipFlagParsing: true,
		Action: func(c *cli.Context) error {
			return runCheck(c, stdout, stderr)
		},
	}
}

func runCheck(c *cli.Context, stdout, stderr io.Writer) error {
	args := c.Args().Slice()
	if wantsHelp(args) {
		// check's own help: the role's command would print the role's.
		cli.HelpPrinter(c.App.Writer, cli.CommandHelpTemplate, c.Command)
		return nil
	}
	role, args, err := checkRole(args)
	if err != nil {
		return err
	}
	var cmd *cli.Command
	switch role {
	case "server":
		cmd = serverCommand(io.Discard)
		cmd.Action = func(c *cli.Context) error { return checkServer(c, stdout, stderr) }
	case "client":
		cmd = clientCommand(io.Discard)
		cmd.Action = func(c *cli.Context) error { return checkClient(c, stdout, stderr) }
	}
	app := &cli.App{
		Name: "tunnel check", Writer: stdout, ErrWriter: stderr, HideVersion: true,
		DisableSliceFlagSeparator: true,
		ExitErrHandler:            func(*cli.Context, error) {},
		OnUsageError:              usageError,
		Commands:                  []*cli.Command{cmd},
	}
	return app.RunContext(c.Context, append([]string{"tunnel check", role}, args...))
}

// wantsHelp reports whether args ask for help (-h, --help) before any "--".
func wantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "--h", "-help", "--help":
			return true
		}
	}
	return false
}

// checkRole takes --role out of args, or guesses the role from the config
// file's keys, then from the flags (--forward is a client's).
func checkRole(args []string) (string, []string, error) {
	var role, cfg string
	var rest []string
	sawForward := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		isFlag := strings.HasPrefix(a, "-")
		switch {
		case isFlag && name == "role":
			if !hasVal {
				if i+1 >= len(args) {
					return "", nil, flagError("--role", "needs a value: server or client")
				}
				i++
				val = args[i]
			}
			role = val
			continue
		case isFlag && name == configFlagName:
			cfg = val
			if !hasVal && i+1 < len(args) {
				cfg = args[i+1]
			}
		case isFlag && name == "forward":
			sawForward = true
		}
		rest = append(rest, a)
	}
	switch {
	case role == "server" || role == "client":
		return role, rest, nil
	case role != "":
		return "", nil, flagError("--role", "%q is not server or client", role)
	case roleOfFile(cfg) != "":
		return roleOfFile(cfg), rest, nil
	case sawForward:
		return "client", rest, nil
	}
	return "server", rest, nil
}

// roleOfFile guesses from the top-level keys of a config file; "" if it
// cannot tell (the check itself then reports what is wrong).
func roleOfFile(path string) string {
	if path == "" {
		return ""
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var doc map[string]any
	if yaml.Unmarshal(data, &doc) != nil {
		return ""
	}
	for _, k := range []string{"forwards", "server", "server_name"} {
		if _, ok := doc[k]; ok {
			return "client"
		}
	}
	for _, k := range []string{"routes", "listen", "allow"} {
		if _, ok := doc[k]; ok {
			return "server"
		}
	}
	return ""
}

// checker collects problems, one per key or flag.
type checker struct {
	fc    *fileConfig
	probs []problem
	seen  map[string]bool
}

// add records err as a problem unless one was already recorded for the
// same key or flag, or the flag's value in the file had one.
func (ck *checker) add(err error) {
	if err == nil {
		return
	}
	var ce *configError
	if errors.As(err, &ce) && ck.fc != nil && ck.fc.broken[strings.TrimPrefix(ce.flag, "--")] {
		return
	}
	p := ck.fc.flagProblem(err)
	if ck.seen == nil {
		ck.seen = map[string]bool{}
	}
	if p.key != "" && ck.seen[p.key] {
		return
	}
	ck.seen[p.key] = true
	ck.probs = append(ck.probs, p)
}

// fail prints the problems and returns the exit-2 error.
func (ck *checker) fail(stderr io.Writer) error {
	for _, p := range ck.probs {
		fmt.Fprintln(stderr, p.String())
	}
	return &configError{err: fmt.Errorf("%d problem(s) found", len(ck.probs))}
}

// resolveForCheck is resolve for `tunnel check`: file problems are printed
// as the result.
func resolveForCheck(c *cli.Context, stderr io.Writer) (*cli.Context, *fileConfig, *flagLayers, *checker, error) {
	layers, err := captureFlags(c)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	rc, fc, probs, err := layers.resolveAll()
	ck := &checker{fc: fc, probs: probs}
	if err == nil && rc == nil {
		return nil, nil, nil, nil, ck.fail(stderr) // the file did not parse
	}
	return rc, fc, layers, ck, err
}

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

func checkServer(c *cli.Context, stdout, stderr io.Writer) error {
	rc, fc, layers, ck, err := resolveForCheck(c, stderr)
	if err != nil {
		return err
	}
	_, err = newLogger(rc, io.Discard, "server")
	ck.add(err)
	ck.add(checkAdmin(rc))
	if l := rc.String("listen"); checkListen(l) != nil {
		ck.add(flagError("--listen", "%q: %v", l, checkListen(l)))
	}
	if len(rc.StringSlice("allow")) == 0 {
		ck.add(flagError("--allow", "required: name the client addresses that may connect (0.0.0.0/0 and ::/0 allow all)"))
	}
	for _, v := range splitValues(rc.StringSlice("route"), "") {
		if _, err := server.ParseRoute(v); err != nil {
			ck.add(&configError{flag: "--route", err: err})
		}
	}
	if len(rc.StringSlice("route")) == 0 {
		ck.add(flagError("--route", "required: at least one NAME=HOST:PORT"))
	}
	m := checkTrust(ck, rc)
	_, err = revocationPolicy(rc)
	ck.add(err)
	var setup *serverSetup
	if len(ck.probs) == 0 {
		setup, err = loadServer(rc, fc, quietLog())
		ck.add(err)
		if err == nil {
			_, err = server.New(setup.cfg)
			ck.add(err)
		}
	}
	if len(ck.probs) > 0 {
		return ck.fail(stderr)
	}
	setup.rc.Close()

	w := &summary{out: stdout, fc: fc, layers: layers}
	w.header("server", layers)
	w.line("listen", setup.listen)
	al := setup.cfg.Filter.Allowlist()
	w.line("allow", fmt.Sprintf("%d prefix(es): %s", al.Len(), al.String()))
	w.warnings(allowWarnings(al))
	for _, r := range setup.cfg.Routes {
		opts := ""
		switch {
		case r.ProxyV1:
			opts = " (proxy-v1)"
		case r.ProxyV2:
			opts = " (proxy-v2)"
		}
		w.line("route", fmt.Sprintf("%s -> %s%s: %s", r.Name, r.Target, opts, r.Access))
		if r.Access != nil && r.Access.Allow != nil && !overlaps(r.Access.Allow, al) {
			w.warn(fc.routes[r.Name]+".allow", "admits no address the listener allows: the route is closed to everyone")
		}
	}
	if setup.cfg.RawRoute != "" {
		w.line("raw route", setup.cfg.RawRoute)
	}
	if setup.cfg.ProxyProtocolFrom != nil {
		w.line("proxy from", setup.cfg.ProxyProtocolFrom.String())
	}
	if fc != nil && fc.ruled && fc.access == nil {
		w.warn("--route", "replaces the config file's routes and their allow_identities/allow rules")
	}
	w.trust(m, setup.rc.Policy())
	w.warnings(keyFileWarnings(rc))
	return nil
}

func checkClient(c *cli.Context, stdout, stderr io.Writer) error {
	rc, fc, layers, ck, err := resolveForCheck(c, stderr)
	if err != nil {
		return err
	}
	_, err = newLogger(rc, io.Discard, "client")
	ck.add(err)
	ck.add(checkAdmin(rc))
	_, _, err = loadServerFlags(rc)
	ck.add(err)
	for _, v := range splitValues(rc.StringSlice("forward"), ",") {
		if _, err := client.ParseForward(v); err != nil {
			ck.add(&configError{flag: "--forward", err: err})
		}
	}
	if len(rc.StringSlice("forward")) == 0 {
		ck.add(flagError("--forward", "required: at least one [HOST:]PORT=ROUTE"))
	}
	m := checkTrust(ck, rc)
	_, err = revocationPolicy(rc)
	ck.add(err)
	var setup *clientSetup
	if len(ck.probs) == 0 {
		setup, err = loadClient(rc, fc, quietLog())
		ck.add(err)
		if err == nil {
			_, err = client.New(setup.cfg)
			ck.add(err)
		}
	}
	if len(ck.probs) > 0 {
		return ck.fail(stderr)
	}
	setup.rc.Close()

	w := &summary{out: stdout, fc: fc, layers: layers}
	w.header("client", layers)
	w.line("server", strings.Join(append([]string{setup.cfg.Server}, setup.cfg.Failover...), ", "))
	if n := rc.String("server-name"); n != "" {
		w.line("server name", n)
	}
	for _, f := range setup.cfg.Forwards {
		w.line("forward", f.Listen+" -> route "+f.Route)
	}
	w.trust(m, setup.rc.Policy())
	w.warnings(keyFileWarnings(rc))
	return nil
}

// checkTrust loads the TLS files, recording each file's problem.
func checkTrust(ck *checker, c *cli.Context) *trust.Material {
	src := trust.Sources{CertFile: c.String("cert"), KeyFile: c.String("key"), CAFile: c.String("ca"), CRLFiles: crlFiles(c)}
	missing := false
	for _, f := range []struct{ flag, v string }{{"--cert", src.CertFile}, {"--key", src.KeyFile}, {"--ca", src.CAFile}} {
		if f.v == "" {
			ck.add(flagError(f.flag, "required"))
			missing = true
		}
	}
	if missing {
		return nil
	}
	m, err := trust.Load(src)
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range joined.Unwrap() {
			ck.add(trustError(e))
		}
	} else if err != nil {
		ck.add(trustError(err))
	}
	return m
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

// summary writes `tunnel check`'s report.
type summary struct {
	out    io.Writer
	fc     *fileConfig
	layers *flagLayers
}

func (s *summary) header(role string, l *flagLayers) {
	src := "flags"
	if l.cfgPath != "" {
		src = l.cfgPath
	}
	fmt.Fprintf(s.out, "%s configuration OK (%s)\n", role, src)
}

func (s *summary) line(what, v string) { fmt.Fprintf(s.out, "  %-12s %s\n", what, v) }

func (s *summary) warn(where, msg string) { fmt.Fprintf(s.out, "warning: %s: %s\n", where, msg) }

// warnings prints each configWarning where its flag's value came from.
func (s *summary) warnings(ws []configWarning) {
	for _, w := range ws {
		s.warn(s.key(w.flag), w.msg)
	}
}

// key names where a flag's value came from: its key path or the flag.
func (s *summary) key(flag string) string {
	if s.fc != nil && s.layers.fromFile(s.fc, flag) {
		return s.fc.values[flag].key
	}
	return "--" + flag
}

// trust lists the certificates with their expiry, warning about those that
// expire within expiryWarning and about intermediates of the CA bundle
// whose revocation p cannot check.
func (s *summary) trust(m *trust.Material, p trust.RevocationPolicy) {
	cert := func(what, key string, c *x509.Certificate) {
		s.line(what, fmt.Sprintf("%s, serial %s, expires %s", c.Subject, c.SerialNumber.Text(16), c.NotAfter.UTC().Format(time.RFC3339)))
		switch left := time.Until(c.NotAfter); {
		case left <= 0:
			s.warn(key, fmt.Sprintf("%s expired %s", c.Subject, c.NotAfter.UTC().Format(time.RFC3339)))
		case left < expiryWarning:
			s.warn(key, fmt.Sprintf("%s expires in %s", c.Subject, left.Round(time.Hour)))
		}
	}
	cert("certificate", s.key("cert"), m.Certificate.Leaf)
	for _, ca := range m.CACerts {
		cert("ca", s.key("ca"), ca)
	}
	for _, msg := range uncheckedCAWarnings(m, p) {
		s.warn(s.key("ca"), msg)
	}
	if n := len(m.CRLs); n > 0 {
		s.line("crl files", fmt.Sprintf("%d CRL(s) from %s", n, strings.Join(m.Sources.CRLFiles, ", ")))
	}
}
