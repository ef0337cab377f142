package main

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// Shell completion: `tunnel completion bash|zsh|fish` prints a script made
// from the command definitions, so it lists exactly the subcommands and
// flags this binary has. The scripts are static: a TAB runs no tunnel
// process (urfave/cli's own bash and zsh scripts run the binary with
// --generate-bash-completion on every TAB, depend on bash-completion's
// _get_comp_words_by_ref, and know no flag values; its fish script offers
// no files after --cert and friends).

// completionShells are the shells `tunnel completion` writes scripts for.
var completionShells = []string{"bash", "zsh", "fish"}

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
	root := completionTree(app)
	switch shell {
	case "bash":
		return bashCompletion(root), nil
	case "zsh":
		return zshCompletion(root), nil
	case "fish":
		return fishCompletion(root), nil
	}
	return "", &configError{err: fmt.Errorf("shell %q: want one of %s", shell, strings.Join(completionShells, ", "))}
}

// compCommand is a command as completion sees it.
type compCommand struct {
	path  string   // the command words from the root: "tunnel cert issue"
	names []string // its name and aliases
	usage string
	flags []compFlag
	args  []string // positional values to offer; none means files
	subs  []*compCommand
}

// compFlag is a flag as completion sees it.
type compFlag struct {
	names   []string // with dashes: "--help", "-h"
	usage   string
	value   bool     // takes a value (--flag VALUE or --flag=VALUE)
	choices []string // the values to offer; none means files
}

// completionTree turns app's visible commands and flags into compCommands.
func completionTree(app *cli.App) *compCommand {
	root := &compCommand{path: app.Name, names: []string{app.Name}, usage: app.Usage, flags: compFlags(app.VisibleFlags())}
	cmds := app.VisibleCommands()
	for _, cmd := range cmds {
		root.subs = append(root.subs, compCmd(root.path, cmd, cmds))
	}
	return root
}

func compCmd(parent string, cmd *cli.Command, siblings []*cli.Command) *compCommand {
	cc := &compCommand{path: parent + " " + cmd.Name, names: cmd.Names(), usage: cmd.Usage, flags: compFlags(cmd.VisibleFlags())}
	if !cmd.HideHelp && cli.HelpFlag != nil {
		// urfave/cli adds --help to a command only when it runs it.
		cc.flags = mergeFlags(cc.flags, compFlags([]cli.Flag{cli.HelpFlag}))
	}
	switch cmd.Name {
	case "check":
		// check passes the flags of the role (server or client) on.
		for _, s := range siblings {
			if s.Name == "server" || s.Name == "client" {
				cc.flags = mergeFlags(cc.flags, compFlags(s.VisibleFlags()))
			}
		}
	case "completion":
		cc.args = completionShells
	case helpName:
		for _, s := range siblings {
			cc.args = append(cc.args, s.Name)
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
		cc.subs = append(cc.subs, compCmd(cc.path, sub, subs))
	}
	return cc
}

// helpName is urfave/cli's help command.
const helpName = "help"

func compFlags(flags []cli.Flag) []compFlag {
	var out []compFlag
	for _, f := range flags {
		cf := compFlag{choices: flagChoices[f.Names()[0]]}
		for _, n := range f.Names() {
			if len(n) == 1 {
				cf.names = append(cf.names, "-"+n)
			} else {
				cf.names = append(cf.names, "--"+n)
			}
		}
		if df, ok := f.(cli.DocGenerationFlag); ok {
			cf.value = df.TakesValue()
			cf.usage = strings.ReplaceAll(df.GetUsage(), "`", "")
		}
		out = append(out, cf)
	}
	return out
}

// mergeFlags appends the flags of more whose first name a lacks.
func mergeFlags(a, more []compFlag) []compFlag {
	for _, f := range more {
		if !slices.ContainsFunc(a, func(g compFlag) bool { return g.names[0] == f.names[0] }) {
			a = append(a, f)
		}
	}
	return a
}

// walk calls fn for c and every command below it, parents first.
func (c *compCommand) walk(fn func(*compCommand)) {
	fn(c)
	for _, s := range c.subs {
		s.walk(fn)
	}
}

func (c *compCommand) subNames() []string {
	var out []string
	for _, s := range c.subs {
		out = append(out, s.names...)
	}
	return out
}

func (c *compCommand) flagNames() []string {
	var out []string
	for _, f := range c.flags {
		out = append(out, f.names...)
	}
	return out
}

// shQuote quotes s in single quotes. For bash and zsh a single quote in s
// ends the quoting, is escaped with a backslash, and starts it again; fish
// takes a backslash-escaped quote (and backslash) inside single quotes.
func shQuote(s string, fish bool) string {
	if fish {
		return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// pathCases writes the case arms that step from a command path and a word
// to the subcommand's path, in bash/zsh case syntax.
func pathCases(b *strings.Builder, root *compCommand, indent string) {
	root.walk(func(c *compCommand) {
		for _, s := range c.subs {
			var pats []string
			for _, n := range s.names {
				pats = append(pats, shQuote(c.path+" "+n, false))
			}
			fmt.Fprintf(b, "%s%s) path=%s ;;\n", indent, strings.Join(pats, "|"), shQuote(s.path, false))
		}
	})
}

// valueFlagPatterns are "path --flag" for every flag that takes a value.
func valueFlagPatterns(root *compCommand) []string {
	var pats []string
	root.walk(func(c *compCommand) {
		for _, f := range c.flags {
			if f.value {
				for _, n := range f.names {
					pats = append(pats, c.path+" "+n)
				}
			}
		}
	})
	return pats
}

// choiceCases writes, for bash/zsh, one case arm per flag with choices:
// the pattern "path --flag" and body(choices).
func choiceCases(b *strings.Builder, root *compCommand, indent string, body func([]string) string) {
	root.walk(func(c *compCommand) {
		for _, f := range c.flags {
			if len(f.choices) == 0 {
				continue
			}
			var pats []string
			for _, n := range f.names {
				pats = append(pats, shQuote(c.path+" "+n, false))
			}
			fmt.Fprintf(b, "%s%s) %s ;;\n", indent, strings.Join(pats, "|"), body(f.choices))
		}
	})
}

func quoteAll(words []string) []string {
	out := make([]string, len(words))
	for i, w := range words {
		out[i] = shQuote(w, false)
	}
	return out
}

func bashCompletion(root *compCommand) string {
	name := root.path
	fn := "_" + name
	var b strings.Builder
	fmt.Fprintf(&b, `# bash completion for %[1]s, written by `+"`%[1]s completion bash`"+` from its command
# definitions. Load it with: source <(%[1]s completion bash)

# %[2]s_value_flag "PATH --flag": whether the flag takes a value.
%[2]s_value_flag() {
    case "$1" in
    %[3]s) return 0 ;;
    esac
    return 1
}

%[2]s() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" path=%[4]s w i
    COMPREPLY=()
    ((COMP_CWORD > 0)) && prev="${COMP_WORDS[COMP_CWORD-1]}"
    # bash splits --flag=value at "=" (COMP_WORDBREAKS).
    if [[ $cur == "=" ]]; then
        cur=""
    elif [[ $prev == "=" ]] && ((COMP_CWORD > 1)); then
        prev="${COMP_WORDS[COMP_CWORD-2]}"
    fi
    # Find the command: words that are not flags or flag values.
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${COMP_WORDS[i]}"
        case "$w" in
        --) break ;;
        -*)
            if [[ ${COMP_WORDS[i+1]} == "=" ]]; then
                ((i += 2))
            elif %[2]s_value_flag "$path $w"; then
                ((i++))
            fi
            continue
            ;;
        esac
        case "$path $w" in
`, name, fn, strings.Join(quoteAll(valueFlagPatterns(root)), "|"), shQuote(name, false))
	pathCases(&b, root, "        ")
	b.WriteString(`        esac
    done
    # The value of a flag: its choices, or files (complete -o default).
    if [[ $prev == -* ]] && ` + fn + `_value_flag "$path $prev"; then
        case "$path $prev" in
`)
	choiceCases(&b, root, "        ", func(ch []string) string {
		return `COMPREPLY=($(compgen -W ` + shQuote(strings.Join(ch, " "), false) + ` -- "$cur"))`
	})
	b.WriteString(`        esac
        return 0
    fi
    local subs="" flags="" args=""
    case "$path" in
`)
	root.walk(func(c *compCommand) {
		fmt.Fprintf(&b, "    %s) subs=%s flags=%s args=%s ;;\n", shQuote(c.path, false),
			shQuote(strings.Join(c.subNames(), " "), false), shQuote(strings.Join(c.flagNames(), " "), false), shQuote(strings.Join(c.args, " "), false))
	})
	fmt.Fprintf(&b, `    esac
    if [[ $cur == -* || -z "$subs$args" && -z $cur ]]; then
        COMPREPLY=($(compgen -W "$flags" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$subs $args" -- "$cur"))
    fi
    return 0
}

complete -o default -F %s %s
`, fn, name)
	return b.String()
}

// zshDescribe is a zsh array of "word:description" items.
func zshDescribe(items [][2]string) string {
	var parts []string
	for _, it := range items {
		parts = append(parts, shQuote(strings.ReplaceAll(it[0], ":", `\:`)+":"+it[1], false))
	}
	return "(" + strings.Join(parts, " ") + ")"
}

func zshCompletion(root *compCommand) string {
	name := root.path
	fn := "_" + name
	var b strings.Builder
	fmt.Fprintf(&b, `#compdef %[1]s
# zsh completion for %[1]s, written by `+"`%[1]s completion zsh`"+` from its command
# definitions. Put it in a directory of $fpath as _%[1]s, or in a shell with
# compinit loaded: source <(%[1]s completion zsh)

# %[2]s_value_flag "PATH --flag": whether the flag takes a value.
%[2]s_value_flag() {
    case "$1" in
    %[3]s) return 0 ;;
    esac
    return 1
}

%[2]s() {
    local cur="${words[CURRENT]}" prev="${words[CURRENT-1]}" path=%[4]s w i
    for ((i = 2; i < CURRENT; i++)); do
        w="${words[i]}"
        case "$w" in
        --) break ;;
        -*)
            if [[ $w != *=* ]] && %[2]s_value_flag "$path $w"; then
                ((i++))
            fi
            continue
            ;;
        esac
        case "$path $w" in
`, name, fn, strings.Join(quoteAll(valueFlagPatterns(root)), "|"), shQuote(name, false))
	pathCases(&b, root, "        ")
	fmt.Fprintf(&b, `        esac
    done
    # The value of a flag, as --flag VALUE or --flag=VALUE: its choices, or files.
    local flag=""
    if [[ $cur == -*=* ]]; then
        flag="${cur%%%%=*}"
        compset -P '*='
    elif [[ $prev == -* ]]; then
        flag="$prev"
    fi
    if [[ -n $flag ]] && %[1]s_value_flag "$path $flag"; then
        case "$path $flag" in
`, fn)
	choiceCases(&b, root, "        ", func(ch []string) string {
		return "compadd -- " + strings.Join(quoteAll(ch), " ")
	})
	b.WriteString(`        *) _files ;;
        esac
        return
    fi
    local -a subs flags args
    case "$path" in
`)
	root.walk(func(c *compCommand) {
		var subs, flags [][2]string
		for _, s := range c.subs {
			for _, n := range s.names {
				subs = append(subs, [2]string{n, s.usage})
			}
		}
		for _, f := range c.flags {
			for _, n := range f.names {
				flags = append(flags, [2]string{n, f.usage})
			}
		}
		fmt.Fprintf(&b, "    %s)\n        subs=%s\n        flags=%s\n        args=(%s)\n        ;;\n",
			shQuote(c.path, false), zshDescribe(subs), zshDescribe(flags), strings.Join(quoteAll(c.args), " "))
	})
	fmt.Fprintf(&b, `    esac
    if [[ $cur == -* ]] || (( ${#subs} + ${#args} == 0 )); then
        _describe -t flags 'flag' flags
    elif (( ${#subs} )); then
        _describe -t commands 'command' subs
    else
        compadd -- "${args[@]}"
    fi
}

if [[ "${funcstack[1]}" == %[1]s ]]; then
    %[1]s "$@" # autoloaded from $fpath
else
    compdef %[1]s %[2]s
fi
`, fn, name)
	return b.String()
}

func fishCompletion(root *compCommand) string {
	name := root.path
	fn := "__" + name
	var b strings.Builder
	fmt.Fprintf(&b, `# fish completion for %[1]s, written by `+"`%[1]s completion fish`"+` from its command
# definitions. Put it in ~/.config/fish/completions/%[1]s.fish, or: %[1]s completion fish | source

# %[2]s_path prints the command the command line is in ("%[1]s cert issue").
function %[2]s_path
    set -l path %[1]s
    set -l skip 0
    for w in (commandline -opc)[2..-1]
        if test $skip = 1
            set skip 0
            continue
        end
        switch $w
            case --
                break
            case '-*'
                if not string match -q -- '*=*' $w
                    switch "$path $w"
                        case %[3]s
                            set skip 1
                    end
                end
                continue
        end
        switch "$path $w"
`, name, fn, strings.Join(fishQuoteAll(valueFlagPatterns(root)), " "))
	root.walk(func(c *compCommand) {
		for _, s := range c.subs {
			var pats []string
			for _, n := range s.names {
				pats = append(pats, shQuote(c.path+" "+n, true))
			}
			fmt.Fprintf(&b, "            case %s\n                set path %s\n", strings.Join(pats, " "), shQuote(s.path, true))
		}
	})
	fmt.Fprintf(&b, `        end
    end
    echo $path
end

# %[1]s_in PATH: whether the command line is in command PATH.
function %[1]s_in
    test (%[1]s_path) = "$argv[1]"
end

complete -c %[2]s -f
`, fn, name)
	root.walk(func(c *compCommand) {
		cond := shQuote(fn+"_in "+shQuote(c.path, false), true)
		for _, s := range c.subs {
			for _, n := range s.names {
				fmt.Fprintf(&b, "complete -c %s -n %s -a %s -d %s\n", name, cond, shQuote(n, true), shQuote(s.usage, true))
			}
		}
		for _, a := range c.args {
			fmt.Fprintf(&b, "complete -c %s -n %s -a %s\n", name, cond, shQuote(a, true))
		}
		if len(c.subs) == 0 && len(c.args) == 0 && c != root {
			fmt.Fprintf(&b, "complete -c %s -n %s -F\n", name, cond) // positional arguments: files
		}
		for _, f := range c.flags {
			fmt.Fprintf(&b, "complete -c %s -n %s", name, cond)
			for _, n := range f.names {
				if strings.HasPrefix(n, "--") {
					fmt.Fprintf(&b, " -l %s", n[2:])
				} else {
					fmt.Fprintf(&b, " -s %s", n[1:])
				}
			}
			switch {
			case len(f.choices) > 0:
				fmt.Fprintf(&b, " -x -a %s", shQuote(strings.Join(f.choices, " "), true))
			case f.value:
				b.WriteString(" -r -F")
			}
			fmt.Fprintf(&b, " -d %s\n", shQuote(f.usage, true))
		}
	})
	return b.String()
}

func fishQuoteAll(words []string) []string {
	out := make([]string, len(words))
	for i, w := range words {
		out[i] = shQuote(w, true)
	}
	return out
}
