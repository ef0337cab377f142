package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/tunnel-dev/tunnel/client"
	"github.com/tunnel-dev/tunnel/internal/reload"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/server"
	"github.com/tunnel-dev/tunnel/trust"
)

// testInput is a small schema: enough to resolve, not to build Settings
// (the edge's whole table does that, in cmd/tunnel's tests).
func testInput(t *testing.T, file string, given map[string][]string) *Input {
	t.Helper()
	in := &Input{Role: "server", FileFlag: "--config", Given: given, Settings: []Setting{
		{Key: "listen", Flag: "--listen", Kind: String, Default: []string{"127.0.0.1:8443"}},
		{Key: "dial_timeout", Flag: "--dial-timeout", Kind: Duration, Default: []string{"5s"}, Fields: []string{"server.Config.DialTimeout"}},
		{Key: "allow", Flag: "--allow", Kind: List},
		{Key: keyRoutes, Flag: "--route", Kind: List, Fields: []string{"server.Config.Routes"}},
		{Key: "tls.key", Flag: "--key", Kind: String, Fields: []string{"trust.Sources.KeyFile"}},
		{Key: "max_conns_per_addr", Flag: "--max-conns-per-addr", Kind: Int, Default: []string{"64"}, Fields: []string{"netfilter.FilterConfig.MaxConnsPerAddr"}},
		{Key: "forwards", Flag: "--forward", Kind: List, Fields: []string{"client.Config.Forwards"}},
		{Key: "reload.interval", Flag: "--reload-interval", Kind: Duration, Default: []string{"1m"}, Fields: []string{"reload.Config.Interval"}},
	}}
	if file != "" {
		in.File = filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(in.File, []byte(file), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return in
}

// Given values win over the file's, which win over the defaults; a list
// given replaces the file's whole.
func TestResolvePrecedence(t *testing.T) {
	in := testInput(t, "listen: 127.0.0.1:1\ndial_timeout: 7s\nallow: [10.0.0.0/8, 10.1.0.0/16]\n",
		map[string][]string{"dial_timeout": {"9s"}, "allow": {"192.0.2.0/24"}})
	v, probs := Resolve(in)
	if len(probs) > 0 {
		t.Fatal(probs)
	}
	for key, want := range map[string][]string{
		"listen": {"127.0.0.1:1"}, "dial_timeout": {"9s"}, "allow": {"192.0.2.0/24"}, "reload.interval": {"1m"},
	} {
		if got := v.Get(key); !slices.Equal(got, want) {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	if got := v.Where("listen"); got != "listen" {
		t.Errorf("Where(listen) = %q, want the key (from the file)", got)
	}
	if got := v.Where("dial_timeout"); got != "--dial-timeout" {
		t.Errorf("Where(dial_timeout) = %q, want the flag", got)
	}
}

// A library's error names a field; Problem names the setting whose Fields
// hold it, where its value came from: the file's line and key, or the flag.
func TestProblemNamesTheSetting(t *testing.T) {
	in := testInput(t, "listen: 127.0.0.1:1\n\ndial_timeout: -1s\n", map[string][]string{"tls.key": {"k.pem"}})
	v, probs := Resolve(in)
	if len(probs) > 0 {
		t.Fatal(probs)
	}
	for _, tt := range []struct {
		err  error
		want string
	}{
		{&server.FieldError{Field: "DialTimeout", Err: errors.New("-1s is negative")}, in.File + ":3: dial_timeout: -1s is negative"},
		{&trust.LoadError{Field: "KeyFile", Path: "k.pem", Err: trust.ErrKeyMismatch}, `--key: "k.pem": does not match certificate`},
		{fmt.Errorf("wrapped: %w", &netfilter.FieldError{Field: "MaxConnsPerAddr", Err: errors.New("-1 is negative")}), "--max-conns-per-addr: -1 is negative"},
		{&server.FieldError{Field: "Routes", Err: errors.New(`route "a" configured twice`)}, `--route: route "a" configured twice`},
		{&client.ListenError{Forward: client.Forward{Listen: "127.0.0.1:1", Route: "db"}, Err: errors.New("in use")}, "--forward: 127.0.0.1:1=db: in use"},
		{&reload.FieldError{Field: "Interval", Err: errors.New("-1s is negative")}, "--reload-interval: -1s is negative"},
		{&server.FieldError{Field: "Log", Err: errors.New("required")}, "server: Config.Log: required"},
		{errors.New("something else"), "something else"},
	} {
		if got := v.Problem(tt.err).String(); got != tt.want {
			t.Errorf("Problem(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

// Each problem of the file names its line and key path; all are reported,
// and a value with a problem falls back to its default.
func TestFileProblems(t *testing.T) {
	in := testInput(t, "dial_timeout: soon\nbogus: 1\nallow: [10.0.0.0/8, 10.0.0.300/8]\nlisten-x: 1\nreload: {Interval: 1s}\n", map[string][]string{})
	v, probs := Resolve(in)
	var got []string
	for _, p := range probs {
		got = append(got, p.String())
	}
	want := []string{
		in.File + `:1: dial_timeout: "soon" is not a duration such as 30s or 5m`,
		in.File + ":2: bogus: unknown key",
		in.File + `:3: allow[1]: netfilter: allow entry "10.0.0.300/8": netip.ParsePrefix("10.0.0.300/8"): ParseAddr("10.0.0.300"): IPv4 field has value >255`,
		in.File + ":4: listen-x: unknown key",
		in.File + ":5: reload.Interval: unknown key (did you mean reload.interval?)",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("problems:\n%q\nwant\n%q", got, want)
	}
	if got := v.Get("dial_timeout"); !slices.Equal(got, []string{"5s"}) {
		t.Errorf("a broken value resolves to %q, want the default", got)
	}
	if !v.broken("dial_timeout") || !v.broken("allow") {
		t.Error("the broken values are not marked")
	}
	if _, probs := Resolve(testInput(t, "- a list\n", nil)); len(probs) != 1 {
		t.Errorf("a file that is not a mapping: %v", probs)
	}
}

// Changed lists the keys whose values differ, except the reloadable ones.
func TestChanged(t *testing.T) {
	old, _ := Resolve(testInput(t, "", map[string][]string{"allow": {"10.0.0.0/8"}}))
	next, _ := Resolve(testInput(t, "", map[string][]string{"allow": {"10.1.0.0/16"}, "dial_timeout": {"9s"}, "listen": {"127.0.0.1:1"}}))
	if got := next.Changed(old, []string{"allow"}); !slices.Equal(got, []string{"listen", "dial_timeout"}) {
		t.Errorf("Changed = %q, want [listen dial_timeout]", got)
	}
}

func TestSplitValues(t *testing.T) {
	got := SplitValues([]string{"10.0.0.0/8,::1", " 127.0.0.1/32  192.168.0.0/16 "}, ",")
	want := []string{"10.0.0.0/8", "::1", "127.0.0.1/32", "192.168.0.0/16"}
	if !slices.Equal(got, want) {
		t.Errorf("SplitValues(allow) = %q, want %q", got, want)
	}
	// Route values keep their commas (route options).
	got = SplitValues([]string{"db=127.0.0.1:5432,proxy-v2 cache=127.0.0.1:6379"}, "")
	want = []string{"db=127.0.0.1:5432,proxy-v2", "cache=127.0.0.1:6379"}
	if !slices.Equal(got, want) {
		t.Errorf("SplitValues(route) = %q, want %q", got, want)
	}
}

func TestRoleOfFile(t *testing.T) {
	for body, want := range map[string]string{
		"forwards: [\"0=db\"]\n":            "client",
		"server: 127.0.0.1:1\nallow: [x]\n": "client",
		"routes: [db=127.0.0.1:1]\n":        "server",
		"listen: 127.0.0.1:1\n":             "server",
		"log: {level: debug}\n":             "",
		"[not, a, mapping]\n":               "",
	} {
		p := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := RoleOfFile(p); got != want {
			t.Errorf("RoleOfFile(%q) = %q, want %q", body, got, want)
		}
	}
	if got := RoleOfFile(filepath.Join(t.TempDir(), "missing.yaml")); got != "" {
		t.Errorf("RoleOfFile(missing) = %q", got)
	}
}
