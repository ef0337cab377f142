package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
)

// filesMark stands for "the shell offers file names here".
const filesMark = "<files>"

// completionFile writes `tunnel completion SHELL` to a file and returns it.
func completionFile(t *testing.T, shell string) string {
	t.Helper()
	// As in TestManPage: the help command has run, so it is its own
	// subcommand now.
	run(context.Background(), []string{"tunnel", "help", "cert"}, &bytes.Buffer{}, &bytes.Buffer{})
	out := runBounded(t, "completion", shell)
	path := filepath.Join(t.TempDir(), "tunnel."+shell)
	if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// requireShell returns the shell's path, or skips the test (loudly) when
// it is not installed, except under CI, where .ci/run installs it.
func requireShell(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed; CI installs it (.ci/run)", name)
		}
		t.Skipf("SKIPPING: %s is not installed (apt-get install %s)", name, name)
	}
	return path
}

func runShell(t *testing.T, dir, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("%s %q: %v\nstderr: %s", bin, args, err, stderr.String())
	}
	return string(out)
}

// lineWords splits a command line as the shells do for completion: a
// trailing space starts an empty word.
func lineWords(line string) []string {
	words := strings.Fields(line)
	if strings.HasSuffix(line, " ") {
		words = append(words, "")
	}
	return words
}

// completeBash calls the bash script's completion function as bash does on
// TAB, with COMP_WORDS split at "=" as COMP_WORDBREAKS splits them. An empty
// COMPREPLY means files, since the script registers with -o default.
func completeBash(t *testing.T, script, line string) []string {
	t.Helper()
	var words []string
	for _, w := range lineWords(line) {
		if name, val, ok := strings.Cut(w, "="); ok && strings.HasPrefix(w, "-") {
			words = append(words, name, "=", val)
			continue
		}
		words = append(words, w)
	}
	prog := `source "$1"; shift
complete -p tunnel | grep -q -- '-o default' || { echo "not registered with -o default" >&2; exit 1; }
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
_tunnel
printf '%s\n' "${COMPREPLY[@]}"`
	out := runShell(t, t.TempDir(), requireShell(t, "bash"), append([]string{"-c", prog, "bash", script}, words...)...)
	got := strings.Fields(out)
	if len(got) == 0 {
		return []string{filesMark}
	}
	return got
}

// completeZsh runs the zsh script's completion function in zsh with the
// completion system's builtins replaced by functions that print what they
// are given that starts with the word typed, as the real _describe and
// compadd offer it (zsh completes only inside its line editor).
func completeZsh(t *testing.T, script, line string) []string {
	t.Helper()
	prog := `_describe() { local arr=${@[-1]} it; for it in ${(P)arr}; do [[ ${it%%:*} == "$cur"* ]] && print -r -- $it; done; return 0; }
compadd() { [[ $1 == -- ]] && shift; local w; for w; do [[ $w == "$cur"* ]] && print -r -- $w; done; return 0; }
_files() { print -r -- '` + filesMark + `'; }
compset() { [[ $1 == -P && $cur == *=* ]] || return 1; cur=${cur#*=}; }
compdef() { :; }
source "$1"; shift
words=("$@"); CURRENT=$#
_tunnel`
	out := runShell(t, t.TempDir(), requireShell(t, "zsh"), append([]string{"-c", prog, "zsh", script}, lineWords(line)...)...)
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		item, _, _ := strings.Cut(l, ":") // "word:description"
		got = append(got, strings.ReplaceAll(item, `\`, ""))
	}
	return got
}

// completeFish asks fish's own completion engine (complete -C) in a
// directory holding one file, a.pem, which stands for "files".
func completeFish(t *testing.T, script, line string) []string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.pem"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	out := runShell(t, dir, requireShell(t, "fish"), "-c", `source $argv[1]; complete -C $argv[2]`, script, line)
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		item, _, _ := strings.Cut(l, "\t") // "word\tdescription"
		if _, v, ok := strings.Cut(item, "="); ok && strings.HasPrefix(item, "-") {
			item = v // --flag=value is offered whole
		}
		if strings.HasSuffix(item, "a.pem") {
			item = filesMark
		}
		got = append(got, item)
	}
	return got
}

// TestCompletionScripts completes command lines in each shell and checks
// what is offered.
func TestCompletionScripts(t *testing.T) {
	rootCmds := []string{"server", "client", "check", "cert", "demo", "completion", "version", "help"}
	tests := []struct {
		line string
		want []string // all offered
		not  []string // none offered
	}{
		{"tunnel ", rootCmds, []string{"man", "init", "--listen"}},
		{"tunnel se", []string{"server"}, []string{"cert"}},
		{"tunnel -", []string{"--help", "-h", "--version", "-v"}, []string{"server", "--listen"}},
		{"tunnel cert ", []string{"init", "revoke", "crl", "issue"}, []string{"server", "demo"}},
		{"tunnel cert issue --", []string{"--server", "--client", "--dns", "--ip", "--uri", "--ou", "--days", "--rsa", "--force", "--help"}, []string{"--listen", "--crl-url"}},
		{"tunnel cert issue --rsa ", []string{"2048", "3072", "4096"}, []string{filesMark, "--server"}},
		{"tunnel server --", []string{"--listen", "--allow", "--route", "--cert", "--key", "--ca", "--config", "--admin", "--help"}, []string{"--forward", "--server-name"}},
		{"tunnel server --log-format ", []string{"text", "json"}, []string{filesMark, "--listen"}},
		{"tunnel server --log-format=j", []string{"json"}, []string{filesMark, "--listen"}},
		{"tunnel server --cert ", []string{filesMark}, []string{"--listen", "server"}},
		// A flag's value is not a command word: "cert" here is a file name.
		{"tunnel server --cert cert --l", []string{"--listen", "--log-level"}, []string{"init", "--client"}},
		{"tunnel client --", []string{"--server", "--server-name", "--forward", "--cert"}, []string{"--listen", "--allow"}},
		{"tunnel check --", []string{"--role", "--config", "--listen", "--forward", "--help"}, []string{"server"}},
		{"tunnel check --role ", []string{"server", "client"}, []string{filesMark, "--listen"}},
		{"tunnel check --role client --forw", []string{"--forward"}, []string{"client"}},
		{"tunnel completion ", []string{"bash", "zsh", "fish"}, []string{filesMark, "help"}},
		{"tunnel help ", []string{"server", "cert"}, []string{"init"}},
	}
	shells := []struct {
		name     string
		complete func(*testing.T, string, string) []string
	}{
		{"bash", completeBash},
		{"zsh", completeZsh},
		{"fish", completeFish},
	}
	for _, sh := range shells {
		t.Run(sh.name, func(t *testing.T) {
			requireShell(t, sh.name)
			script := completionFile(t, sh.name)
			for _, tt := range tests {
				got := sh.complete(t, script, tt.line)
				for _, w := range tt.want {
					if !slices.Contains(got, w) {
						t.Errorf("%s: complete %q = %q, want %q among them", sh.name, tt.line, got, w)
					}
				}
				for _, w := range tt.not {
					if slices.Contains(got, w) {
						t.Errorf("%s: complete %q = %q, want no %q", sh.name, tt.line, got, w)
					}
				}
			}
		})
	}
}

// TestCompletionCoversEveryCommand: for every visible command of the app,
// bash offers each of its subcommands after "PATH " and each of its long
// flags after "PATH --", so a command or flag added later is completed
// without touching completion.go.
func TestCompletionCoversEveryCommand(t *testing.T) {
	script := completionFile(t, "bash")
	app := newApp(&bytes.Buffer{}, &bytes.Buffer{})
	app.Setup()
	var visit func(path string, cmds []*cli.Command)
	visit = func(path string, cmds []*cli.Command) {
		for _, c := range cmds {
			if c.Hidden || c.Name == helpName {
				continue
			}
			p := path + " " + c.Name
			if subs := c.VisibleCommands(); len(subs) > 0 {
				got := completeBash(t, script, p+" ")
				for _, s := range subs {
					if !slices.Contains(got, s.Name) {
						t.Errorf("complete %q = %q, want subcommand %q", p+" ", got, s.Name)
					}
				}
			}
			got := completeBash(t, script, p+" --")
			for _, f := range c.VisibleFlags() {
				if n := f.Names()[0]; len(n) > 1 && !slices.Contains(got, "--"+n) {
					t.Errorf("complete %q = %q, want flag --%s", p+" --", got, n)
				}
			}
			visit(p, c.Subcommands)
		}
	}
	visit("tunnel", app.Commands)
}

func TestCompletionUnknownShell(t *testing.T) {
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"tunnel", "completion", "ksh"}, &out, &errb)
	if code != exitConfig || !strings.Contains(errb.String(), `"ksh"`) || out.Len() != 0 {
		t.Errorf("tunnel completion ksh: exit %d, stdout %q, stderr %q; want exit 2 naming the shell", code, out.String(), errb.String())
	}
}

// The scripts parse in their shells (what `zsh -n` and `fish -n` check),
// so a syntax error cannot hide in a line no test completes.
func TestCompletionScriptsParse(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish"} {
		t.Run(sh, func(t *testing.T) {
			runShell(t, t.TempDir(), requireShell(t, sh), "-n", completionFile(t, sh))
		})
	}
}
