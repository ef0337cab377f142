package completion

import (
	"strings"
	"testing"
)

// Each shell's script names the tree's commands, flags and choices, and
// quotes what a shell would otherwise read.
func TestScript(t *testing.T) {
	root := &Command{Path: "tool", Names: []string{"tool"}, Usage: "a tool", Flags: []Flag{{Names: []string{"--help", "-h"}, Usage: "show help"}}}
	root.Subs = []*Command{{
		Path: "tool run", Names: []string{"run"}, Usage: "run it's thing",
		Flags: []Flag{{Names: []string{"--level"}, Usage: "how loud", Value: true, Choices: []string{"low", "high"}}, {Names: []string{"--file"}, Value: true}},
	}}
	for _, shell := range Shells {
		s, err := Script(root, shell)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"run", "--level", "low high", `it'\''s`} {
			switch {
			case shell == "bash" && want == `it'\''s`:
				continue // bash shows no descriptions
			case shell == "fish" && want == `it'\''s`:
				want = `it\'s`
			}
			if shell == "zsh" && want == "low high" {
				want = "'low' 'high'"
			}
			if !strings.Contains(s, want) {
				t.Errorf("%s script lacks %q", shell, want)
			}
		}
	}
	if _, err := Script(root, "tcsh"); err == nil || !strings.Contains(err.Error(), "want one of bash, zsh, fish") {
		t.Errorf("Script(tcsh) = %v", err)
	}
}
