package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"

	"github.com/urfave/cli/v2"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/devpki"
)

func certCommand(stdout io.Writer) *cli.Command {
	keyFlags := []cli.Flag{
		&cli.IntFlag{Name: "days", Usage: "validity in days (default: 3650 for the CA, 825 for certificates)"},
		&cli.IntFlag{Name: "rsa", Usage: "RSA key of `BITS` (2048, 3072 or 4096) instead of ECDSA P-256"},
		&cli.BoolFlag{Name: "force", Usage: "overwrite existing files"},
	}
	return &cli.Command{
		Name:  "cert",
		Usage: "a development CA for tests and trials (use a real CA in production)",
		Description: `Example:
   tunnel cert init ./pki
   tunnel cert issue ./pki --server tunnel.example.com --ip 127.0.0.1 --dns localhost
   tunnel cert issue ./pki --client app1
   tunnel cert issue ./pki --client api --uri spiffe://example.org/payments/api --ou payments
   tunnel cert revoke ./pki app1               # and writes pki/crl.pem
   tunnel cert crl ./pki --next-update 24h     # re-sign pki/crl.pem

   Keys are written 0600 and never overwritten without --force. For
   production, issue certificates from a real CA (step-ca, Vault PKI,
   cert-manager, your enterprise CA).`,
		OnUsageError: usageError,
		Subcommands: []*cli.Command{
			certSub("init", "create a CA in DIR: ca.pem and ca-key.pem", "DIR", append([]cli.Flag{
				&cli.StringFlag{Name: "crl-url", Usage: "http(s) CRL Distribution Point `URL` put into every certificate this CA issues"},
			}, keyFlags...), withDir(func(c *cli.Context, dir string) error {
				opt := keyOptions(c)
				opt.CRLURL = c.String("crl-url")
				files, err := devpki.Init(dir, opt)
				return reportFiles(stdout, files, err)
			})),
			certSub("revoke", "revoke the certificate DIR/NAME.pem and write DIR/crl.pem", "DIR NAME", []cli.Flag{nextUpdateFlag}, func(c *cli.Context) error {
				if c.Args().Len() != 2 {
					return &configError{err: fmt.Errorf("want DIR and NAME arguments, got %d arguments", c.Args().Len())}
				}
				serial, files, err := devpki.Revoke(c.Args().Get(0), c.Args().Get(1), c.Duration("next-update"))
				if err == nil {
					fmt.Fprintf(stdout, "revoked %s (serial %s)\n", c.Args().Get(1), serial.Text(16))
				}
				return reportFiles(stdout, files, err)
			}),
			certSub("crl", "sign a new CRL of the revoked certificates of DIR into DIR/crl.pem", "DIR", []cli.Flag{nextUpdateFlag},
				withDir(func(c *cli.Context, dir string) error {
					files, err := devpki.WriteCRL(dir, c.Duration("next-update"))
					return reportFiles(stdout, files, err)
				})),
			certSub("issue", "issue a server or client certificate from the CA in DIR", "DIR", append([]cli.Flag{
				&cli.StringFlag{Name: "server", Usage: "issue a server certificate for `NAME` (CN and DNS name)"},
				&cli.StringFlag{Name: "client", Usage: "issue a client certificate for `NAME` (CN)"},
				&cli.StringSliceFlag{Name: "dns", Usage: "extra DNS `NAME` for a server certificate (repeatable)"},
				&cli.StringSliceFlag{Name: "ip", Usage: "IP `ADDRESS` for a server certificate (repeatable)"},
				&cli.StringSliceFlag{Name: "uri", Usage: "URI SAN, such as the SPIFFE ID spiffe://example.org/app: an absolute `URI` (repeatable)"},
				&cli.StringSliceFlag{Name: "ou", Usage: "subject organizational `UNIT` (repeatable)"},
			}, keyFlags...), withDir(func(c *cli.Context, dir string) error {
				return issue(c, stdout, dir)
			})),
		},
	}
}

// certSub is one subcommand of `tunnel cert`.
func certSub(name, usage, args string, flags []cli.Flag, action cli.ActionFunc) *cli.Command {
	return &cli.Command{Name: name, Usage: usage, ArgsUsage: args, Flags: flags, OnUsageError: usageError, Action: action}
}

// withDir is an action that takes one DIR argument.
func withDir(fn func(c *cli.Context, dir string) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		dir, err := oneArg(c, "DIR")
		if err != nil {
			return err
		}
		return fn(c, dir)
	}
}

// issue is `tunnel cert issue DIR`.
func issue(c *cli.Context, stdout io.Writer, dir string) error {
	srv, cl := c.String("server"), c.String("client")
	opt, err := nameOptions(c)
	if err != nil {
		return err
	}
	switch {
	case srv != "" && cl != "":
		return flagError("--server/--client", "give one, not both")
	case srv != "":
		var ips []net.IP
		for _, s := range config.SplitValues(c.StringSlice("ip"), ",") {
			ip := net.ParseIP(s)
			if ip == nil {
				return flagError("--ip", "%q is not an IP address", s)
			}
			ips = append(ips, ip)
		}
		files, err := devpki.IssueServer(dir, srv, config.SplitValues(c.StringSlice("dns"), ","), ips, opt)
		return reportFiles(stdout, files, err)
	case cl != "":
		if len(c.StringSlice("dns")) > 0 || len(c.StringSlice("ip")) > 0 {
			return flagError("--dns/--ip", "only for --server certificates")
		}
		files, err := devpki.IssueClient(dir, cl, opt)
		return reportFiles(stdout, files, err)
	}
	return flagError("--server/--client", "required: the NAME to issue for")
}

// nextUpdateFlag sets how long a written CRL is valid.
var nextUpdateFlag = &cli.DurationFlag{Name: "next-update", Value: devpki.DefaultCRLNextUpdate,
	Usage: "the CRL's validity (`DURATION` until nextUpdate); servers refetch or re-read it before then"}

func oneArg(c *cli.Context, what string) (string, error) {
	if c.Args().Len() != 1 {
		return "", &configError{err: fmt.Errorf("want exactly one %s argument, got %d", what, c.Args().Len())}
	}
	return c.Args().First(), nil
}

func keyOptions(c *cli.Context) devpki.Options {
	return devpki.Options{Days: c.Int("days"), RSABits: c.Int("rsa"), Force: c.Bool("force")}
}

// nameOptions are keyOptions plus the names of `cert issue` that both
// kinds of certificate take: --uri and --ou, each occurrence one value
// (a URI may hold commas, an OU commas and spaces).
func nameOptions(c *cli.Context) (devpki.Options, error) {
	opt := keyOptions(c)
	for _, u := range c.StringSlice("uri") {
		if err := devpki.CheckURI(u); err != nil {
			return opt, flagError("--uri", "%v", err)
		}
		opt.URIs = append(opt.URIs, u)
	}
	for _, ou := range c.StringSlice("ou") {
		if err := devpki.CheckOrgUnit(ou); err != nil {
			return opt, flagError("--ou", "%v", err)
		}
		opt.OrgUnits = append(opt.OrgUnits, ou)
	}
	return opt, nil
}

// reportFiles prints the files written, or turns a devpki error into a
// configuration error (bad names, existing files, a missing CA are all the
// operator's to fix).
func reportFiles(w io.Writer, files []string, err error) error {
	if errors.Is(err, fs.ErrExist) {
		err = fmt.Errorf("%w (use --force to overwrite)", err)
	}
	if err != nil {
		return &configError{err: err}
	}
	for _, f := range files {
		fmt.Fprintln(w, "wrote", f)
	}
	return nil
}
