package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version and commit are set at build time with
// -ldflags "-X main.version=... -X main.commit=..." (the Makefile does);
// when empty, the build info that go build stamps supplies them.
var (
	version = ""
	commit  = ""
)

// buildInfo is what `tunnel version` and `tunnel --version` report.
type buildInfo struct {
	Version   string // -X main.version, else the module version go build stamped, else "dev"
	Commit    string // -X main.commit, else the VCS revision go build stamped, else "unknown"
	Modified  bool   // the VCS tree had uncommitted changes (known only from the build info)
	GoVersion string // the toolchain that built the binary
}

// readBuildInfo resolves the version and commit: ldflags values win, then
// the main module's version and the vcs.revision and vcs.modified settings
// of bi (nil when the binary carries none). A module version of "(devel)"
// says nothing and is skipped; one go build derived from the VCS tree
// (a tag, or a pseudo-version, "+dirty" when modified) is kept as it is.
func readBuildInfo(ldVersion, ldCommit string, bi *debug.BuildInfo) buildInfo {
	b := buildInfo{Version: ldVersion, Commit: ldCommit, GoVersion: runtime.Version()}
	if bi != nil {
		if bi.GoVersion != "" {
			b.GoVersion = bi.GoVersion
		}
		if v := bi.Main.Version; b.Version == "" && v != "" && v != "(devel)" {
			b.Version = v
		}
		if b.Commit == "" {
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					b.Commit = s.Value
				case "vcs.modified":
					b.Modified = s.Value == "true"
				}
			}
			if b.Commit == "" {
				b.Modified = false
			}
		}
	}
	if b.Version == "" {
		b.Version = "dev"
	}
	if b.Commit == "" {
		b.Commit = "unknown"
	}
	return b
}

// String is the version line: "v1.2.0 (go1.26.0, commit 0123abc)", with
// ", modified" when built from a tree with uncommitted changes.
func (b buildInfo) String() string {
	s := fmt.Sprintf("%s (%s, commit %s", b.Version, b.GoVersion, b.Commit)
	if b.Modified {
		s += ", modified"
	}
	return s + ")"
}

// thisBuild is the build info of the running binary.
func thisBuild() buildInfo {
	bi, _ := debug.ReadBuildInfo()
	return readBuildInfo(version, commit, bi)
}
