package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// tunnel check --help shows check's own help, as tunnel help check does,
// and not the server's (which it printed before: check hands its flags to
// the role's command).
func TestCheckHelp(t *testing.T) {
	var want bytes.Buffer
	if code := run(context.Background(), []string{"tunnel", "help", "check"}, &want, &bytes.Buffer{}); code != 0 {
		t.Fatalf("tunnel help check: exit %d", code)
	}
	for _, args := range [][]string{{"check", "--help"}, {"check", "-h"}, {"check", "--role", "client", "--help"}, {"check", "--config", "x.yaml", "-h"}} {
		var out, errb bytes.Buffer
		code := run(context.Background(), append([]string{"tunnel"}, args...), &out, &errb)
		s := out.String()
		if code != 0 || s != want.String() {
			t.Errorf("tunnel %s: exit %d, stderr %q, stdout:\n%s\nwant exit 0 and the output of tunnel help check:\n%s", strings.Join(args, " "), code, errb.String(), s, want.String())
		}
		for _, w := range []string{"tunnel check - load a server or client configuration", "--role ROLE", "--config FILE", "tunnel server --help"} {
			if !strings.Contains(s, w) {
				t.Errorf("tunnel %s: help lacks %q", strings.Join(args, " "), w)
			}
		}
		if strings.Contains(s, "--listen ADDR") || strings.Contains(s, "--server-name") {
			t.Errorf("tunnel %s: shows a role's flags:\n%s", strings.Join(args, " "), s)
		}
	}
	// After "--" a -h is an argument, not a request for help.
	if !wantsHelp([]string{"--role", "server", "-h"}) || wantsHelp([]string{"--", "-h"}) {
		t.Error("wantsHelp: want true for -h, false for -h after --")
	}
}
