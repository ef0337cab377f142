// Package completion writes shell completion scripts for bash, zsh and fish
// from a tree of commands and flags. The scripts are static: a TAB runs no
// process, and each flag's values (its choices, or files) are written in.
package completion

import (
	"fmt"
	"strings"
)

// Shells are the shells Script writes for.
var Shells = []string{"bash", "zsh", "fish"}

// Command is a command as completion sees it.
type Command struct {
	Path  string   // the command words from the root: "tunnel cert issue"
	Names []string // its name and aliases
	Usage string
	Flags []Flag
	Args  []string // positional values to offer; none means files
	Subs  []*Command
}

// Flag is a flag as completion sees it.
type Flag struct {
	Names   []string // with dashes: "--help", "-h"
	Usage   string
	Value   bool     // takes a value (--flag VALUE or --flag=VALUE)
	Choices []string // the values to offer; none means files
}

// Script returns the completion script of the command tree root for shell,
// one of Shells.
func Script(root *Command, shell string) (string, error) {
	switch shell {
	case "bash":
		return bashCompletion(root), nil
	case "zsh":
		return zshCompletion(root), nil
	case "fish":
		return fishCompletion(root), nil
	}
	return "", fmt.Errorf("shell %q: want one of %s", shell, strings.Join(Shells, ", "))
}

// walk calls fn for c and every command below it, parents first.
func (c *Command) walk(fn func(*Command)) {
	fn(c)
	for _, s := range c.Subs {
		s.walk(fn)
	}
}

func (c *Command) subNames() []string {
	var out []string
	for _, s := range c.Subs {
		out = append(out, s.Names...)
	}
	return out
}

func (c *Command) flagNames() []string {
	var out []string
	for _, f := range c.Flags {
		out = append(out, f.Names...)
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
func pathCases(b *strings.Builder, root *Command, indent string) {
	root.walk(func(c *Command) {
		for _, s := range c.Subs {
			var pats []string
			for _, n := range s.Names {
				pats = append(pats, shQuote(c.Path+" "+n, false))
			}
			fmt.Fprintf(b, "%s%s) path=%s ;;\n", indent, strings.Join(pats, "|"), shQuote(s.Path, false))
		}
	})
}

// valueFlagPatterns are "path --flag" for every flag that takes a value.
func valueFlagPatterns(root *Command) []string {
	var pats []string
	root.walk(func(c *Command) {
		for _, f := range c.Flags {
			if f.Value {
				for _, n := range f.Names {
					pats = append(pats, c.Path+" "+n)
				}
			}
		}
	})
	return pats
}

// choiceCases writes, for bash/zsh, one case arm per flag with choices:
// the pattern "path --flag" and body(choices).
func choiceCases(b *strings.Builder, root *Command, indent string, body func([]string) string) {
	root.walk(func(c *Command) {
		for _, f := range c.Flags {
			if len(f.Choices) == 0 {
				continue
			}
			var pats []string
			for _, n := range f.Names {
				pats = append(pats, shQuote(c.Path+" "+n, false))
			}
			fmt.Fprintf(b, "%s%s) %s ;;\n", indent, strings.Join(pats, "|"), body(f.Choices))
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

func bashCompletion(root *Command) string {
	name := root.Path
	fn := "_" + name
	var b strings.Builder
	fmt.Fprintf(&b, `# bash completion for %[1]s, written by `+"`%[1]s completion bash`"+` from its command
# definitions. Load it with: source <(%[1]s completion bash)

`, name)
	writeValueFlagFunc(&b, fn, root)
	fmt.Fprintf(&b, `%[2]s() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" path=%[3]s w i
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
`, name, fn, shQuote(name, false))
	writePathStep(&b, root)
	b.WriteString(`    # The value of a flag: its choices, or files (complete -o default).
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
	root.walk(func(c *Command) {
		fmt.Fprintf(&b, "    %s) subs=%s flags=%s args=%s ;;\n", shQuote(c.Path, false),
			shQuote(strings.Join(c.subNames(), " "), false), shQuote(strings.Join(c.flagNames(), " "), false), shQuote(strings.Join(c.Args, " "), false))
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

func zshCompletion(root *Command) string {
	name := root.Path
	fn := "_" + name
	var b strings.Builder
	fmt.Fprintf(&b, `#compdef %[1]s
# zsh completion for %[1]s, written by `+"`%[1]s completion zsh`"+` from its command
# definitions. Put it in a directory of $fpath as _%[1]s, or in a shell with
# compinit loaded: source <(%[1]s completion zsh)

`, name)
	writeValueFlagFunc(&b, fn, root)
	fmt.Fprintf(&b, `%[2]s() {
    local cur="${words[CURRENT]}" prev="${words[CURRENT-1]}" path=%[3]s w i
    for ((i = 2; i < CURRENT; i++)); do
        w="${words[i]}"
        case "$w" in
        --) break ;;
        -*)
            if [[ $w != *=* ]] && %[2]s_value_flag "$path $w"; then
                ((i++))
            fi
`, name, fn, shQuote(name, false))
	writePathStep(&b, root)
	fmt.Fprintf(&b, `    # The value of a flag, as --flag VALUE or --flag=VALUE: its choices, or files.
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
	root.walk(func(c *Command) {
		var subs, flags [][2]string
		for _, s := range c.Subs {
			for _, n := range s.Names {
				subs = append(subs, [2]string{n, s.Usage})
			}
		}
		for _, f := range c.Flags {
			for _, n := range f.Names {
				flags = append(flags, [2]string{n, f.Usage})
			}
		}
		fmt.Fprintf(&b, "    %s)\n        subs=%s\n        flags=%s\n        args=(%s)\n        ;;\n",
			shQuote(c.Path, false), zshDescribe(subs), zshDescribe(flags), strings.Join(quoteAll(c.Args), " "))
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

func fishCompletion(root *Command) string {
	name := root.Path
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
	root.walk(func(c *Command) {
		for _, s := range c.Subs {
			var pats []string
			for _, n := range s.Names {
				pats = append(pats, shQuote(c.Path+" "+n, true))
			}
			fmt.Fprintf(&b, "            case %s\n                set path %s\n", strings.Join(pats, " "), shQuote(s.Path, true))
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
	root.walk(func(c *Command) {
		cond := shQuote(fn+"_in "+shQuote(c.Path, false), true)
		for _, s := range c.Subs {
			for _, n := range s.Names {
				fmt.Fprintf(&b, "complete -c %s -n %s -a %s -d %s\n", name, cond, shQuote(n, true), shQuote(s.Usage, true))
			}
		}
		for _, a := range c.Args {
			fmt.Fprintf(&b, "complete -c %s -n %s -a %s\n", name, cond, shQuote(a, true))
		}
		if len(c.Subs) == 0 && len(c.Args) == 0 && c != root {
			fmt.Fprintf(&b, "complete -c %s -n %s -F\n", name, cond) // positional arguments: files
		}
		for _, f := range c.Flags {
			fmt.Fprintf(&b, "complete -c %s -n %s", name, cond)
			for _, n := range f.Names {
				if strings.HasPrefix(n, "--") {
					fmt.Fprintf(&b, " -l %s", n[2:])
				} else {
					fmt.Fprintf(&b, " -s %s", n[1:])
				}
			}
			switch {
			case len(f.Choices) > 0:
				fmt.Fprintf(&b, " -x -a %s", shQuote(strings.Join(f.Choices, " "), true))
			case f.Value:
				b.WriteString(" -r -F")
			}
			fmt.Fprintf(&b, " -d %s\n", shQuote(f.Usage, true))
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

// writeValueFlagFunc writes the bash and zsh function FN_value_flag "PATH
// --flag", which succeeds when the flag of command PATH takes a value.
func writeValueFlagFunc(b *strings.Builder, fn string, root *Command) {
	fmt.Fprintf(b, `# %[1]s_value_flag "PATH --flag": whether the flag takes a value.
%[1]s_value_flag() {
    case "$1" in
    %[2]s) return 0 ;;
    esac
    return 1
}

`, fn, strings.Join(quoteAll(valueFlagPatterns(root)), "|"))
}

// writePathStep writes, for bash and zsh, the end of the loop over the
// command line's words: a flag is skipped, and any other word steps the
// command path to its subcommand.
func writePathStep(b *strings.Builder, root *Command) {
	b.WriteString(`            continue
            ;;
        esac
        case "$path $w" in
`)
	pathCases(b, root, "        ")
	b.WriteString(`        esac
    done
`)
}
