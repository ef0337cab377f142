package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"
)

// run runs the command line args and returns the exit status. Only main
// calls os.Exit; tests call run.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	err := app.RunContext(ctx, reorderPositional(args))
	code := exitCode(err)
	switch {
	case err == nil:
	case code == exitConfig:
		fmt.Fprintf(stderr, "%s: %v\n", commandName(args), err)
	case errors.As(err, new(*loggedError)):
		// already logged as an event
	default:
		fmt.Fprintf(stderr, "%s: %v\n", commandName(args), err)
	}
	return code
}

func commandName(args []string) string {
	name := "tunnel"
	for _, a := range args[1:] {
		if strings.HasPrefix(a, "-") {
			break
		}
		switch a {
		case "server", "client", "check", "status", "cert", "demo", "init", "issue", "revoke", "crl", "completion":
			name += " " + a
			continue
		}
		break
	}
	return name
}

// reorderPositional lets `tunnel cert issue DIR --client app1` work:
// urfave/cli v2 stops parsing flags at the first positional argument, so the
// leading positional arguments of a cert subcommand move behind its flags.
func reorderPositional(args []string) []string {
	for i := 1; i+1 < len(args); i++ {
		if args[i] != "cert" {
			if strings.HasPrefix(args[i], "-") {
				continue // global flags
			}
			return args
		}
		start := i + 2 // after "cert SUB"
		end := start
		for end < len(args) && !strings.HasPrefix(args[end], "-") {
			end++
		}
		if end == start || end == len(args) {
			return args
		}
		out := append([]string{}, args[:start]...)
		out = append(out, args[end:]...)
		return append(out, args[start:end]...)
	}
	return args
}

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:  "tunnel",
		Usage: "a Layer-4 TCP tunnel with mutual TLS",
		UsageText: `tunnel server --listen 127.0.0.1:8443 --cert pki/srv.pem --key pki/srv-key.pem --ca pki/ca.pem \
     --allow 127.0.0.1/32 --route db=127.0.0.1:5432
   tunnel client --server 127.0.0.1:8443 --server-name srv --cert pki/app1.pem --key pki/app1-key.pem \
     --ca pki/ca.pem --forward 15432=db
   tunnel demo`,
		Version:                   thisBuild().String(), // --version and -v print it, as `tunnel version` does
		Writer:                    stdout,
		ErrWriter:                 stderr,
		DisableSliceFlagSeparator: true, // --route values carry commas; see splitValues
		// Errors reach run, which prints one line and picks the status.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError:   usageError,
		Commands: []*cli.Command{
			serverCommand(stderr),
			clientCommand(stderr),
			checkCommand(stdout, stderr),
			statusCommand(stdout),
			certCommand(stdout),
			demoCommand(stdout, stderr),
			completionCommand(stdout),
			manCommand(stdout),
			{
				Name:  "version",
				Usage: "print the version, Go version and commit",
				Action: func(c *cli.Context) error {
					cli.ShowVersion(c)
					return nil
				},
			},
		},
	}
}

func usageError(_ *cli.Context, err error, _ bool) error {
	return &configError{err: err}
}
