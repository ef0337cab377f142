package main

import (
	"io"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/tunnel-dev/tunnel/internal/completion"
)

// Shell completion: `tunnel completion bash|zsh|fish` prints a script made
// from the command definitions, so it lists exactly the subcommands and
// flags this binary has. The scripts are static: a TAB runs no tunnel
// process (urfave/cli's own bash and zsh scripts run the binary with
// --generate-bash-completion on every TAB, depend on bash-completion's
// _get_comp_words_by_ref, and know no flag values; its fish script offers
// no files after --cert and friends).

// flagChoices are the values offered after a flag, by flag name.
var flagChoices = map[string][]string{
	"log-format": {"text", "json"},
	"log-level":  {"debug", "info", "warn", "error"},
	"role":       {"server", "client"},
	"rsa":        {"2048", "3072", "4096"},
}

func completionCommand(stdout io.Writer) *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script for bash, zsh or fish",
		ArgsUsage: "SHELL",
		Description: `Example:
   source <(tunnel completion bash)                       # this shell only
   tunnel completion bash > /etc/bash_completion.d/tunnel
   tunnel completion zsh > "${fpath[1]}/_tunnel"          # then compinit
   tunnel completion fish > ~/.config/fish/completions/tunnel.fish

   The Debian package installs all three.`,
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			shell, err := oneArg(c, "SHELL")
			if err != nil {
				return err
			}
			script, err := completionScript(c.App, shell)
			if err != nil {
				return err
			}
			_, err = io.WriteString(stdout, script)
			return err
		},
	}
}

// completionScript returns the completion script of app for shell. app
// must be set up (App.Setup, which App.Run does), so that the help and
// version flags are among its flags.
func completionScript(app *cli.App, shell string) (string, error) {
	script, err := completion.Script(completionTree(app), shell)
	if err != nil {
		return "", &configError{err: err}
	}
	return script, nil
}

// completionTree turns app's visible commands and flags into a completion tree.
func completionTree(app *cli.App) *completion.Command {
	root := &completion.Command{Path: app.Name, Names: []string{app.Name}, Usage: app.Usage, Flags: compFlags(app.VisibleFlags())}
	cmds := app.VisibleCommands()
	for _, cmd := range cmds {
		root.Subs = append(root.Subs, compCmd(root.Path, cmd, cmds))
	}
	return root
}

func compCmd(parent string, cmd *cli.Command, siblings []*cli.Command) *completion.Command {
	cc := &completion.Command{Path: parent + " " + cmd.Name, Names: cmd.Names(), Usage: cmd.Usage, Flags: compFlags(cmd.VisibleFlags())}
	if !cmd.HideHelp && cli.HelpFlag != nil {
		// urfave/cli adds --help to a command only when it runs it.
		cc.Flags = mergeFlags(cc.Flags, compFlags([]cli.Flag{cli.HelpFlag}))
	}
	switch cmd.Name {
	case "check":
		// check passes the flags of the role (server or client) on.
		for _, s := range siblings {
			if s.Name == "server" || s.Name == "client" {
				cc.Flags = mergeFlags(cc.Flags, compFlags(s.VisibleFlags()))
			}
		}
	case "completion":
		cc.Args = completion.Shells
	case helpName:
		for _, s := range siblings {
			cc.Args = append(cc.Args, s.Name)
		}
	}
	subs := cmd.VisibleCommands()
	if len(subs) == 1 && subs[0].Name == helpName {
		subs = nil // the help subcommand urfave/cli adds to a command it runs
	}
	for _, sub := range subs {
		if sub == cmd {
			continue // urfave/cli's help command, once run, is its own subcommand
		}
		cc.Subs = append(cc.Subs, compCmd(cc.Path, sub, subs))
	}
	return cc
}

// helpName is urfave/cli's help command.
const helpName = "help"

func compFlags(flags []cli.Flag) []completion.Flag {
	var out []completion.Flag
	for _, f := range flags {
		cf := completion.Flag{Choices: flagChoices[f.Names()[0]]}
		for _, n := range f.Names() {
			if len(n) == 1 {
				cf.Names = append(cf.Names, "-"+n)
			} else {
				cf.Names = append(cf.Names, "--"+n)
			}
		}
		if df, ok := f.(cli.DocGenerationFlag); ok {
			cf.Value = df.TakesValue()
			cf.Usage = strings.ReplaceAll(df.GetUsage(), "`", "")
		}
		out = append(out, cf)
	}
	return out
}

// mergeFlags appends the flags of more whose first name a lacks.
func mergeFlags(a, more []completion.Flag) []completion.Flag {
	for _, f := range more {
		if !slices.ContainsFunc(a, func(g completion.Flag) bool { return g.Names[0] == f.Names[0] }) {
			a = append(a, f)
		}
	}
	return a
}
