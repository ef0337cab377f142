package main

import (
	"bytes"
	"context"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestReadBuildInfo(t *testing.T) {
	stamped := &debug.BuildInfo{
		GoVersion: "go1.26.0",
		Main:      debug.Module{Path: "github.com/tunnel-dev/tunnel", Version: "v0.0.0-20261123015435-9b10b6602469"},
		Settings: []debug.BuildSetting{
			{Key: "-trimpath", Value: "true"},
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "9b10b66024693da7b168d09ed093f1391a6f0b9a"},
			{Key: "vcs.modified", Value: "false"},
		},
	}
	dirty := &debug.BuildInfo{
		GoVersion: "go1.26.0",
		Main:      debug.Module{Version: "v1.2.0+dirty"},
		Settings:  []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "true"}},
	}
	installed := &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v1.3.0"}} // go install ...@v1.3.0: no VCS
	bare := &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}}     // -buildvcs=false
	tests := []struct {
		name                string
		ldVersion, ldCommit string
		bi                  *debug.BuildInfo
		want                string
	}{
		{"plain go build in a checkout", "", "", stamped, "v0.0.0-20261123015435-9b10b6602469 (go1.26.0, commit 9b10b66024693da7b168d09ed093f1391a6f0b9a)"},
		{"uncommitted changes", "", "", dirty, "v1.2.0+dirty (go1.26.0, commit abc123, modified)"},
		{"go install of a tag", "", "", installed, "v1.3.0 (go1.26.0, commit unknown)"},
		{"no VCS stamp", "", "", bare, "dev (go1.26.0, commit unknown)"},
		{"ldflags win", "v2.0.0", "fedcba9", dirty, "v2.0.0 (go1.26.0, commit fedcba9)"},
		{"ldflags version only", "v2.0.0", "", stamped, "v2.0.0 (go1.26.0, commit 9b10b66024693da7b168d09ed093f1391a6f0b9a)"},
		{"no build info", "", "", nil, "dev (" + runtime.Version() + ", commit unknown)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := readBuildInfo(tt.ldVersion, tt.ldCommit, tt.bi).String(); got != tt.want {
				t.Errorf("readBuildInfo(%q, %q) = %q, want %q", tt.ldVersion, tt.ldCommit, got, tt.want)
			}
		})
	}
}

// tunnel version, tunnel --version and tunnel -v print the same line, which
// is this binary's build info.
func TestVersionFlags(t *testing.T) {
	want := "tunnel version " + thisBuild().String() + "\n"
	for _, args := range [][]string{{"version"}, {"--version"}, {"-v"}} {
		var out, errb bytes.Buffer
		code := run(context.Background(), append([]string{"tunnel"}, args...), &out, &errb)
		if code != 0 || out.String() != want {
			t.Errorf("tunnel %s: exit %d, stdout %q, stderr %q; want exit 0 and %q", strings.Join(args, " "), code, out.String(), errb.String(), want)
		}
	}
}
