package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/tunnel-dev/tunnel/client"
	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/reload"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/server"
	"github.com/tunnel-dev/tunnel/trust"
)

func TestConfigKey(t *testing.T) {
	for flag, want := range map[string]string{
		"listen":                  "listen",
		"handshake-timeout":       "handshake_timeout",
		"cert":                    "tls.cert",
		"ca":                      "tls.ca",
		"crl":                     "crl.files",
		"crl-deny-on-unavailable": "crl.deny_on_unavailable",
		"log-format":              "log.format",
		"reload-interval":         "reload.interval",
		"route":                   "routes",
		"forward":                 "forwards",
		"raw-route":               "raw_route",
		"config":                  "",
		"help":                    "",
	} {
		if got := configKey(flag); got != want {
			t.Errorf("configKey(%q) = %q, want %q", flag, got, want)
		}
	}
}

// writeFile writes a file in a fresh temporary directory.
func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// resolveCmd parses args with cmd's flags (as `tunnel ROLE args` would) and
// returns the resolved values with the config file's problems, or the
// error of captureInput.
func resolveCmd(t *testing.T, cmd *cli.Command, args ...string) (*config.Values, []config.Problem, error) {
	t.Helper()
	var v *config.Values
	var probs []config.Problem
	var rerr error
	role := serverRole
	if cmd.Name == clientRole.name {
		role = clientRole
	}
	cmd.Action = func(c *cli.Context) error {
		in, err := captureInput(c, role.name, role.settings())
		if err != nil {
			rerr = err
			return nil
		}
		v, probs = config.Resolve(in)
		return nil
	}
	app := &cli.App{Name: "tunnel", Writer: io.Discard, ErrWriter: io.Discard, DisableSliceFlagSeparator: true,
		ExitErrHandler: func(*cli.Context, error) {}, Commands: []*cli.Command{cmd}}
	if err := app.RunContext(context.Background(), append([]string{"tunnel", cmd.Name}, args...)); err != nil {
		t.Fatalf("parsing %q: %v", args, err)
	}
	return v, probs, rerr
}

// sampleValues are values for list flags whose items are checked.
var sampleValues = map[string]string{
	"allow":               "10.9.0.0/16",
	"proxy-protocol-from": "10.8.0.0/16",
	"route":               "r1=127.0.0.1:1",
	"forward":             "127.0.0.1:1=r1",
	"expose":              "127.0.0.1:0=svc,allow=10.7.0.0/16,publisher=cn:app1",
	"publish":             "svc=127.0.0.1:1",
}

// Every flag of both roles can be set from the config file: a flag added
// later fails here until it has a key of a supported type.
func TestEveryFlagHasAConfigKey(t *testing.T) {
	for _, cmd := range []*cli.Command{serverCommand(io.Discard), clientCommand(io.Discard)} {
		for _, f := range cmd.Flags {
			name := f.Names()[0]
			key := configKey(name)
			if key == "" && (name == configFlagName || name == "help") {
				continue
			}
			kind, err := kindOf(f)
			if key == "" || err != nil {
				t.Errorf("%s: flag --%s has no config key (%v)", cmd.Name, name, err)
				continue
			}
			// Write the key with a value the default is not, and read it back.
			want := "text-value"
			yamlVal := want
			switch kind {
			case config.List:
				want = sampleValues[name]
				if want == "" {
					want = "item-value"
				}
				yamlVal = "[" + want + "]"
				if strings.Contains(want, ",") { // one item, whose options a flow list would split
					yamlVal = "['" + want + "']"
				}
			case config.Bool:
				want = "true"
				if bf, ok := f.(*cli.BoolFlag); ok && bf.Value {
					want = "false"
				}
				yamlVal = want
			case config.Duration:
				want, yamlVal = "17s", "17s"
			case config.Int, config.Uint:
				want, yamlVal = "1717", "1717"
			case config.Float:
				want, yamlVal = "17.5", "17.5"
			}
			doc := yamlAt(key, yamlVal)
			path := writeFile(t, "c.yaml", doc)
			v, probs, err := resolveCmd(t, cmd, "--config", path)
			if err != nil || len(probs) > 0 {
				t.Errorf("%s: flag --%s as key %s: %v %v\n%s", cmd.Name, name, key, err, probs, doc)
				continue
			}
			got := strings.Join(v.Get(key), ",")
			if got != want || v.Where(key) != key {
				t.Errorf("%s: key %s = %q (from %s), want %q from the file for flag --%s", cmd.Name, key, got, v.Where(key), want, name)
			}
		}
	}
}

// yamlAt writes key (dotted) = value as nested YAML.
func yamlAt(key, value string) string {
	section, rest, nested := strings.Cut(key, ".")
	if nested {
		return section + ":\n  " + rest + ": " + value + "\n"
	}
	return key + ": " + value + "\n"
}

// Command line over environment over file over default.
func TestConfigPrecedence(t *testing.T) {
	path := writeFile(t, "server.yaml", `
handshake_timeout: 7s
dial_timeout: 7s
idle_timeout: 7s
allow: [10.0.0.0/8]
`)
	t.Setenv("TUNNEL_DIAL_TIMEOUT", "8s")
	t.Setenv("TUNNEL_IDLE_TIMEOUT", "8s")
	v, _, err := resolveCmd(t, serverCommand(io.Discard), "--config", path, "--idle-timeout", "9s", "--allow", "192.0.2.0/24")
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{
		"handshake_timeout": "7s",  // file
		"dial_timeout":      "8s",  // environment over file
		"idle_timeout":      "9s",  // flag over environment and file
		"shutdown_timeout":  "30s", // default
	} {
		if got := v.Get(key); !slices.Equal(got, []string{want}) {
			t.Errorf("%s = %q, want %v", key, got, want)
		}
	}
	if got := v.Get("allow"); !slices.Equal(got, []string{"192.0.2.0/24"}) {
		t.Errorf("allow = %q: a list on the command line replaces the file's", got)
	}
}

// Each problem names its line and key path; all of them are reported.
func TestConfigFileProblems(t *testing.T) {
	tests := []struct {
		name, body string
		want       []string
	}{
		{"unknown key", "listen: 127.0.0.1:1\nbogus: 1\n", []string{":2: bogus: unknown key"}},
		{"flag spelling", "handshake-timeout: 5s\n", []string{":1: handshake-timeout: unknown key (did you mean handshake_timeout?)"}},
		{"nested unknown", "tls:\n  cert: a\n  kee: b\n", []string{":3: tls.kee: unknown key"}},
		{"bad duration", "dial_timeout: soon\n", []string{":1: dial_timeout: \"soon\" is not a duration"}},
		{"bad bool", "crl:\n  disable: maybe\n", []string{":2: crl.disable: \"maybe\" is not true or false"}},
		{"bad int", "max_streams: many\n", []string{":1: max_streams: \"many\" is not an integer"}},
		{"list item", "allow:\n  - 10.0.0.0/8\n  - 10.0.0.300/8\n", []string{":3: allow[1]: "}},
		{"map for scalar", "listen: {a: b}\n", []string{":1: listen: want a single value, not a mapping"}},
		{"section not map", "tls: x\n", []string{":1: tls: want a mapping"}},
		{"twice", "listen: a\nlisten: b\n", []string{":2: listen: given twice"}},
		{"route rule", "routes:\n  - name: db\n    target: 127.0.0.1:1\n    allow_identities: [\"cn:a\", \"dns:a*.corp\"]\n",
			[]string{":4: routes[0].allow_identities[1]: "}},
		{"route key", "routes:\n  - name: db\n    target: 127.0.0.1:1\n    allowed: [x]\n", []string{":4: routes[0].allowed: unknown key"}},
		{"route no target", "routes:\n  - name: db\n", []string{":2: routes[0].target: required"}},
		{"route options", "routes:\n  - name: db\n    target: 127.0.0.1:1\n    options: [proxy-v1, proxy-v2]\n",
			[]string{":2: routes[0]: server: route \"db=127.0.0.1:1,proxy-v1,proxy-v2\": proxy-v1 and proxy-v2 together"}},
		{"route dup", "routes:\n  - db=127.0.0.1:1\n  - name: db\n    target: 127.0.0.1:2\n", []string{":3: routes[1].name: route \"db\" is configured twice"}},
		{"several", "bogus: 1\ndial_timeout: x\n", []string{":1: bogus:", ":2: dial_timeout:"}},
		{"syntax", "listen: [\n", []string{"c.yaml"}},
		{"not a map", "- a\n", []string{":1: want a mapping"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, "c.yaml", tt.body)
			_, probs, err := resolveCmd(t, serverCommand(io.Discard), "--config", path)
			if err != nil || len(probs) == 0 {
				t.Fatalf("no problems (%v)", err)
			}
			var got []string
			for _, p := range probs {
				got = append(got, p.String())
			}
			if len(got) != len(tt.want) {
				t.Fatalf("problems %q, want %d", got, len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, got[i], w)
				}
			}
			if err := (&configError{err: &problemsError{list: probs}}); exitCode(err) != exitConfig {
				t.Errorf("exit code %d, want %d", exitCode(err), exitConfig)
			}
		})
	}
}

// The routes of the file carry their rules into the server configuration;
// routes from --route replace them, rules and all.
func TestConfigRouteRules(t *testing.T) {
	dir := pki(t)
	p := func(f string) string { return filepath.Join(dir, f) }
	path := writeFile(t, "server.yaml", `
tls: {cert: `+p("srv.test.pem")+`, key: `+p("srv.test-key.pem")+`, ca: `+p("ca.pem")+`}
allow: [127.0.0.1/32]
routes:
  - name: db
    target: 127.0.0.1:5432
    allow_identities: ["cn:app1", "uri:spiffe://corp/payments/*"]
    allow: [127.0.0.0/8]
  - cache=127.0.0.1:6379
`)
	s := settingsOf(t, serverCommand(io.Discard), "--config", path)
	var db, cache string
	for _, r := range s.Server.Config.Routes {
		switch r.Name {
		case "db":
			db = r.Access.String() + " / " + r.Access.Name
		case "cache":
			cache = r.Access.String()
		}
	}
	if want := "identities cn:app1, uri:spiffe://corp/payments/*; allow 127.0.0.0/8 / routes.db"; db != want {
		t.Errorf("route db rules = %q, want %q", db, want)
	}
	if cache != "every verified client" {
		t.Errorf("route cache rules = %q, want none", cache)
	}

	s = settingsOf(t, serverCommand(io.Discard), "--config", path, "--route", "db=127.0.0.1:5432")
	if rs := s.Server.Config.Routes; len(rs) != 1 || rs[0].Access != nil || !s.RoutesReplaced() {
		t.Errorf("--route db: routes %+v, want db alone without the file's rules", rs)
	}
}

// `tunnel check` exits 0 with a summary, or 2 listing every problem with
// its key path.
func TestCheckCommand(t *testing.T) {
	dir := pki(t)
	p := func(f string) string { return filepath.Join(dir, f) }
	good := `tls: {cert: ` + p("srv.test.pem") + `, key: ` + p("srv.test-key.pem") + `, ca: ` + p("ca.pem") + `}
allow: [0.0.0.0/0]
routes:
  - name: db
    target: 127.0.0.1:5432
    allow_identities: ["cn:app1"]
`
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"tunnel", "check", "--config", writeFile(t, "s.yaml", good)}, &out, &errb)
	if code != 0 {
		t.Fatalf("check of a good config: exit %d\n%s", code, errb.String())
	}
	for _, want := range []string{"server configuration OK", "route        db -> 127.0.0.1:5432: identities cn:app1",
		"warning: allow: 0.0.0.0/0 admits every IPv4 address", "certificate  CN=srv.test"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}

	bad := strings.Replace(good, p("srv.test-key.pem"), p("app1-key.pem"), 1) + "dial_timeout: x\n"
	out.Reset()
	errb.Reset()
	code = run(context.Background(), []string{"tunnel", "check", "--config", writeFile(t, "s.yaml", bad)}, &out, &errb)
	if code != exitConfig {
		t.Fatalf("check of a bad config: exit %d, want 2", code)
	}
	for _, want := range []string{"s.yaml:7: dial_timeout:", "s.yaml:1: tls.key:", "does not match certificate"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("problems lack %q:\n%s", want, errb.String())
		}
	}
}

// The commented examples use only keys that exist, with values of the right
// type.
func TestExampleConfigsParse(t *testing.T) {
	for file, cmd := range map[string]*cli.Command{
		"../../examples/server.yaml": serverCommand(io.Discard),
		"../../examples/client.yaml": clientCommand(io.Discard),
	} {
		if _, probs, err := resolveCmd(t, cmd, "--config", file); err != nil || len(probs) > 0 {
			t.Errorf("%s: %v %v", file, err, probs)
		}
	}
}

// docs/CONFIG.md documents every key of both roles.
func TestConfigDocListsEveryKey(t *testing.T) {
	doc, err := os.ReadFile("../../docs/CONFIG.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []*cli.Command{serverCommand(io.Discard), clientCommand(io.Discard)} {
		for _, f := range cmd.Flags {
			if k := configKey(f.Names()[0]); k != "" && !bytes.Contains(doc, []byte("| `"+k+"` |")) {
				t.Errorf("docs/CONFIG.md has no table row for key %s (flag --%s)", k, f.Names()[0])
			}
		}
	}
}

// List values keep their commas where the command line keeps them: a route
// with options, from the file and from the flag.
func TestConfigListCommas(t *testing.T) {
	path := writeFile(t, "server.yaml", "routes:\n  - db=127.0.0.1:1,proxy-v2\n  - {name: pg, target: \"127.0.0.1:2\", options: [proxy-v2]}\n  - {name: v1, target: \"127.0.0.1:4\", options: [proxy-v1]}\n")
	v, _, err := resolveCmd(t, serverCommand(io.Discard), "--config", path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := v.Get("routes"), []string{"db=127.0.0.1:1,proxy-v2", "pg=127.0.0.1:2,proxy-v2", "v1=127.0.0.1:4,proxy-v1"}; !slices.Equal(got, want) {
		t.Errorf("routes from the file = %q, want %q", got, want)
	}
	v, _, err = resolveCmd(t, serverCommand(io.Discard), "--config", path, "--route", "x=127.0.0.1:3,proxy-v2")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := v.Get("routes"), []string{"x=127.0.0.1:3,proxy-v2"}; !slices.Equal(got, want) {
		t.Errorf("routes from the flag = %q, want %q", got, want)
	}
}

// settingsOf resolves args as resolveCmd does and builds the settings.
func settingsOf(t *testing.T, cmd *cli.Command, args ...string) *config.Settings {
	t.Helper()
	v, probs, err := resolveCmd(t, cmd, args...)
	if err != nil || len(probs) > 0 {
		t.Fatalf("%q: %v %v", args, err, probs)
	}
	s, probs := v.Settings()
	if len(probs) > 0 {
		t.Fatalf("%q: %v", args, probs)
	}
	return s
}

// Every field the settings table names is a field of the library type that
// reports it, so that the type's FieldError finds its setting.
func TestSettingsTableFieldsExist(t *testing.T) {
	types := map[string]reflect.Type{
		"server.Config":          reflect.TypeFor[server.Config](),
		"client.Config":          reflect.TypeFor[client.Config](),
		"netfilter.FilterConfig": reflect.TypeFor[netfilter.FilterConfig](),
		"trust.Sources":          reflect.TypeFor[trust.Sources](),
		"trust.RevocationPolicy": reflect.TypeFor[trust.RevocationPolicy](),
		"trust.SPIFFEConfig":     reflect.TypeFor[trust.SPIFFEConfig](),
		"reload.Config":          reflect.TypeFor[reload.Config](),
	}
	for _, table := range [][]setting{serverSettings(), clientSettings()} {
		for _, row := range table {
			for _, f := range row.fields {
				pkg, rest, _ := strings.Cut(f, ".")
				typ, path, _ := strings.Cut(rest, ".")
				rt, ok := types[pkg+"."+typ]
				if !ok {
					t.Errorf("--%s: field %s: no such type", row.flag.Names()[0], f)
					continue
				}
				for _, name := range strings.Split(path, ".") {
					sf, found := rt.FieldByName(name)
					if !found {
						t.Errorf("--%s: field %s: %s has no field %s", row.flag.Names()[0], f, rt, name)
						break
					}
					rt = sf.Type
				}
			}
		}
	}
}
