package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
)

// tunnel man prints a section-1 roff page made from the command
// definitions: every visible command and each of its flags is in it, and
// the sections an operator looks for.
func TestManPage(t *testing.T) {
	// Run urfave/cli's help command first, as other tests in this process
	// do: it then is its own subcommand, which a walk of the command tree
	// must survive.
	run(context.Background(), []string{"tunnel", "help", "check"}, &bytes.Buffer{}, &bytes.Buffer{})
	page := runBounded(t, "man")
	if !strings.HasPrefix(page, ".nh\n.TH tunnel 1\n") {
		t.Errorf("page starts %q, want a roff page of section 1", page[:min(len(page), 40)])
	}
	for _, sec := range []string{"NAME", "SYNOPSIS", "DESCRIPTION", "FILES", "SIGNALS", "EXIT STATUS", "SEE ALSO", "EXAMPLES", "GLOBAL OPTIONS", "COMMANDS"} {
		if !strings.Contains(page, "\n.SH "+sec+"\n") {
			t.Errorf("page lacks the section %s", sec)
		}
	}
	app := newApp(&bytes.Buffer{}, &bytes.Buffer{})
	var check func(cmds []*cli.Command)
	check = func(cmds []*cli.Command) {
		for _, c := range cmds {
			sec := manSection(page, strings.Join(c.Names(), ", "))
			if sec == "" {
				t.Errorf("page lacks a section for the command %s", c.Name)
				continue
			}
			for _, f := range c.VisibleFlags() {
				if n := f.Names()[0]; !strings.Contains(sec, `\fB--`+n+`\fP`) && !strings.Contains(sec, `\fB-`+n+`\fP`) {
					t.Errorf("the section of %s lacks its flag --%s", c.Name, n)
				}
			}
			check(c.VisibleCommands())
		}
	}
	check(app.VisibleCommands())
	if strings.Contains(page, "print the tunnel(1) man page") {
		t.Error("the hidden man command is in the page")
	}
	// The page's description is the page's alone.
	var help bytes.Buffer
	run(context.Background(), []string{"tunnel", "--help"}, &help, &bytes.Buffer{})
	if strings.Contains(help.String(), "EXIT STATUS") {
		t.Error("tunnel --help shows the man page's sections")
	}
}

// manSection returns the text of the page's section (.SH or .SS) named
// name, up to the next one, or "".
func manSection(page, name string) string {
	for _, h := range []string{"\n.SH " + name + "\n", "\n.SS " + name + "\n"} {
		if i := strings.Index(page, h); i >= 0 {
			rest := page[i+len(h):]
			if j := strings.Index(rest, "\n.S"); j >= 0 {
				rest = rest[:j]
			}
			return rest
		}
	}
	return ""
}

// runBounded runs tunnel with args and returns its stdout, failing the test
// if it does not exit 0 within 30 s (a walk of the command tree that loops).
func runBounded(t *testing.T, args ...string) string {
	t.Helper()
	type result struct {
		code        int
		out, stderr string
	}
	done := make(chan result, 1)
	go func() {
		var out, errb bytes.Buffer
		code := run(context.Background(), append([]string{"tunnel"}, args...), &out, &errb)
		done <- result{code, out.String(), errb.String()}
	}()
	select {
	case r := <-done:
		if r.code != 0 {
			t.Fatalf("tunnel %s: exit %d: %s", strings.Join(args, " "), r.code, r.stderr)
		}
		return r.out
	case <-time.After(30 * time.Second):
		t.Fatalf("tunnel %s has not returned after 30 s", strings.Join(args, " "))
		return ""
	}
}
