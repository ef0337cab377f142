package main

import (
	"io"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/tunnel-dev/tunnel/internal/config"
)

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
	cmd, r := serverCommand(io.Discard), serverRole
	if role == clientRole.name {
		cmd, r = clientCommand(io.Discard), clientRole
	}
	cmd.Action = func(c *cli.Context) error { return r.check(c, stdout, stderr) }
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
	case config.RoleOfFile(cfg) != "":
		return config.RoleOfFile(cfg), rest, nil
	case sawForward:
		return "client", rest, nil
	}
	return "server", rest, nil
}
