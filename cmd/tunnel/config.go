package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"go.yaml.in/yaml/v3"

	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/server"
)

// The config file (docs/CONFIG.md) is YAML whose keys are derived from the
// flags, so a new flag gets a key without anyone writing one: "--max-streams"
// is max_streams, a flag named after a section ("--crl-deny-on-unavailable")
// goes in that section (crl: {deny_on_unavailable: true}), and a few flags
// have names of their own (configKeyOverrides). Values are resolved
// command line > environment (TUNNEL_*) > file > default.

// configFlagName is the flag that names the config file; it has no key.
const configFlagName = "config"

// configSections are the nested mappings of a config file: a flag named
// "SECTION-REST" has the key SECTION.REST.
var configSections = []string{"tls", "crl", "log", "reload"}

// configKeyOverrides are the flags whose key is not derived from the name.
var configKeyOverrides = map[string]string{
	"cert":    "tls.cert",
	"key":     "tls.key",
	"ca":      "tls.ca",
	"crl":     "crl.files",
	"route":   "routes",
	"forward": "forwards",
}

// noConfigKey are the flags a config file cannot set.
var noConfigKey = map[string]bool{configFlagName: true, "help": true}

// configFileFlag is the --config flag of the server and client commands.
func configFileFlag() cli.Flag {
	return &cli.StringFlag{Name: configFlagName, EnvVars: []string{"TUNNEL_CONFIG"},
		Usage: "YAML config `FILE` (docs/CONFIG.md): every flag has a key; flags and TUNNEL_* variables override it; re-read when it changes and on SIGHUP"}
}

// configKey returns the config file key of the flag named name, as a dotted
// path ("tls.cert", "handshake_timeout"), or "" if it has none.
func configKey(name string) string {
	if noConfigKey[name] {
		return ""
	}
	if k, ok := configKeyOverrides[name]; ok {
		return k
	}
	for _, s := range configSections {
		if rest, ok := strings.CutPrefix(name, s+"-"); ok {
			return s + "." + strings.ReplaceAll(rest, "-", "_")
		}
	}
	return strings.ReplaceAll(name, "-", "_")
}

// flagKind is how a flag's value is written and checked.
type flagKind int

const (
	kindString flagKind = iota
	kindList
	kindBool
	kindDuration
	kindInt
	kindUint
	kindFloat
)

// kindOf returns the kind of f, or an error for a flag type the config
// file does not support yet.
func kindOf(f cli.Flag) (flagKind, error) {
	switch f.(type) {
	case *cli.StringFlag, *cli.PathFlag:
		return kindString, nil
	case *cli.StringSliceFlag:
		return kindList, nil
	case *cli.BoolFlag:
		return kindBool, nil
	case *cli.DurationFlag:
		return kindDuration, nil
	case *cli.IntFlag, *cli.Int64Flag:
		return kindInt, nil
	case *cli.UintFlag, *cli.Uint64Flag:
		return kindUint, nil
	case *cli.Float64Flag:
		return kindFloat, nil
	}
	return 0, fmt.Errorf("flag --%s: type %T has no config file support (add it to kindOf in cmd/tunnel/config.go)", f.Names()[0], f)
}

// checkScalar parses v as a value of kind k.
func checkScalar(k flagKind, v string) error {
	var err error
	switch k {
	case kindBool:
		_, err = strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not true or false", v)
		}
	case kindDuration:
		_, err = time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%q is not a duration such as 30s or 5m", v)
		}
	case kindInt:
		_, err = strconv.ParseInt(v, 0, 64)
		if err != nil {
			return fmt.Errorf("%q is not an integer", v)
		}
	case kindUint:
		_, err = strconv.ParseUint(v, 0, 64)
		if err != nil {
			return fmt.Errorf("%q is not a non-negative integer", v)
		}
	case kindFloat:
		_, err = strconv.ParseFloat(v, 64)
		if err != nil {
			return fmt.Errorf("%q is not a number", v)
		}
	}
	return nil
}

// problem is one thing wrong with a configuration: where (a file and line,
// a key path, or a flag) and what.
type problem struct {
	file string // the config file, or "" for a flag or variable
	line int    // 1-based line in file, or 0
	key  string // key path ("routes[0].allow[1]") or flag ("--allow")
	msg  string
}

func (p problem) String() string {
	var b strings.Builder
	if p.file != "" {
		b.WriteString(p.file)
		if p.line > 0 {
			fmt.Fprintf(&b, ":%d", p.line)
		}
		b.WriteString(": ")
	}
	if p.key != "" {
		b.WriteString(p.key + ": ")
	}
	b.WriteString(p.msg)
	return b.String()
}

// problemsError is a configuration with problems; every one is listed by
// `tunnel check`, and a start prints the first (exit 2).
type problemsError struct{ list []problem }

func (e *problemsError) Error() string {
	s := e.list[0].String()
	if n := len(e.list) - 1; n > 0 {
		s += fmt.Sprintf(" (and %d more; `tunnel check` lists them all)", n)
	}
	return s
}

// fileValue is what a config file says for one flag.
type fileValue struct {
	key   string   // key path, "tls.cert"
	line  int      // of the value
	vals  []string // one for a scalar flag
	lines []int    // line of each of vals
}

// fileConfig is one parse of a config file, checked against the flags.
type fileConfig struct {
	path   string
	values map[string]fileValue      // by flag name
	access map[string]*server.Access // route rules by route name; nil if routes came from a flag
	routes map[string]string         // key path of each route of the file, by name ("routes[1]")
	lines  map[string]int            // line of each key path seen
	keys   map[string]cli.Flag       // flags by key path
	kinds  map[string]flagKind       // by flag name
	byName map[string]cli.Flag       // every flag, by name
	broken map[string]bool           // flags whose value in the file has a problem
	ruled  bool                      // some route of the file has rules
}

// newFileConfig indexes flags for parsing a config file.
func newFileConfig(path string, flags []cli.Flag) (*fileConfig, []problem) {
	fc := &fileConfig{
		path: path, values: map[string]fileValue{}, lines: map[string]int{},
		keys: map[string]cli.Flag{}, kinds: map[string]flagKind{}, byName: map[string]cli.Flag{},
		broken: map[string]bool{},
	}
	var probs []problem
	for _, f := range flags {
		name := f.Names()[0]
		fc.byName[name] = f
		k := configKey(name)
		if k == "" {
			continue
		}
		kind, err := kindOf(f)
		if err != nil {
			continue // no key; TestEveryFlagHasAConfigKey fails until kindOf learns the type
		}
		fc.keys[k] = f
		fc.kinds[name] = kind
	}
	return fc, probs
}

// parseConfigFile reads and checks the config file at path against flags.
// Every problem found is returned, each with its line and key path.
func parseConfigFile(path string, flags []cli.Flag) (*fileConfig, []problem) {
	fc, probs := newFileConfig(path, flags)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, append(probs, problem{key: "--" + configFlagName, msg: err.Error()})
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, append(probs, problem{file: path, msg: yamlError(err)})
	}
	if len(doc.Content) == 0 {
		return fc, probs // an empty file sets nothing
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, append(probs, problem{file: path, line: root.Line, msg: "want a mapping of keys to values at the top level"})
	}
	probs = append(probs, fc.parseMapping(root, "")...)
	return fc, probs
}

// yamlError shortens yaml.v3's messages ("yaml: line 3: ...").
func yamlError(err error) string {
	return strings.TrimPrefix(err.Error(), "yaml: ")
}

// parseMapping parses the keys of m, which sits at key path prefix ("" for
// the top level, "tls" for a section).
func (fc *fileConfig) parseMapping(m *yaml.Node, prefix string) []problem {
	var probs []problem
	seen := map[string]bool{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		kn, vn := m.Content[i], m.Content[i+1]
		key := kn.Value
		path := key
		if prefix != "" {
			path = prefix + "." + key
		}
		if kn.Kind != yaml.ScalarNode {
			probs = append(probs, fc.at(kn, prefix, "a key must be a plain name"))
			continue
		}
		if seen[key] {
			probs = append(probs, fc.at(kn, path, "given twice"))
			continue
		}
		seen[key] = true
		fc.lines[path] = kn.Line
		f, isFlag := fc.keys[path]
		var ps []problem
		switch {
		case isFlag && f.Names()[0] == "route":
			ps = fc.parseRoutes(vn, path)
		case isFlag && f.Names()[0] == "forward":
			ps = fc.parseForwards(vn, path)
		case isFlag:
			ps = fc.parseValue(f, vn, path)
		case prefix == "" && fc.isSection(key):
			if vn.Kind != yaml.MappingNode {
				probs = append(probs, fc.at(vn, path, "want a mapping (%s: {key: value})", key))
				continue
			}
			probs = append(probs, fc.parseMapping(vn, path)...)
		default:
			probs = append(probs, fc.at(kn, path, "unknown key%s", fc.suggest(path)))
		}
		if len(ps) > 0 {
			fc.broken[f.Names()[0]] = true
			probs = append(probs, ps...)
		}
	}
	return probs
}

// isSection reports whether some key lives under section.
func (fc *fileConfig) isSection(section string) bool {
	for k := range fc.keys {
		if strings.HasPrefix(k, section+".") {
			return true
		}
	}
	return false
}

// suggest names the key the user probably meant, as " (did you mean x?)".
func (fc *fileConfig) suggest(path string) string {
	norm := func(s string) string {
		return strings.NewReplacer("-", "", "_", "", ".", "").Replace(strings.ToLower(s))
	}
	for k := range fc.keys {
		if norm(k) == norm(path) || norm(k) == norm(strings.TrimPrefix(path, "tls.")) {
			return fmt.Sprintf(" (did you mean %s?)", k)
		}
	}
	// A flag name used as a key, "handshake-timeout" for handshake_timeout.
	if f, ok := fc.byName[path]; ok {
		if k := configKey(f.Names()[0]); k != "" {
			return fmt.Sprintf(" (did you mean %s?)", k)
		}
	}
	return ""
}

// at returns a problem at node n's line.
func (fc *fileConfig) at(n *yaml.Node, key, format string, args ...any) problem {
	return problem{file: fc.path, line: n.Line, key: key, msg: fmt.Sprintf(format, args...)}
}

// scalar returns the text of a scalar node, or a problem.
func (fc *fileConfig) scalar(n *yaml.Node, key string) (string, *problem) {
	switch {
	case n.Kind == yaml.AliasNode && n.Alias != nil:
		return fc.scalar(n.Alias, key)
	case n.Kind != yaml.ScalarNode:
		p := fc.at(n, key, "want a single value, not a %s", kindName(n))
		return "", &p
	case n.Tag == "!!null":
		p := fc.at(n, key, "no value")
		return "", &p
	}
	return n.Value, nil
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	}
	return "value"
}

// list returns the scalar items of a sequence node, or of a single scalar,
// with their nodes.
func (fc *fileConfig) list(n *yaml.Node, key string) ([]string, []*yaml.Node, []problem) {
	if n.Kind == yaml.ScalarNode && n.Tag != "!!null" {
		return []string{n.Value}, []*yaml.Node{n}, nil
	}
	if n.Kind != yaml.SequenceNode {
		return nil, nil, []problem{fc.at(n, key, "want a list of values")}
	}
	var vals []string
	var nodes []*yaml.Node
	var probs []problem
	for i, item := range n.Content {
		v, p := fc.scalar(item, fmt.Sprintf("%s[%d]", key, i))
		if p != nil {
			probs = append(probs, *p)
			continue
		}
		vals = append(vals, v)
		nodes = append(nodes, item)
	}
	return vals, nodes, probs
}

// listItemChecks check one item of a list flag, so that a bad item is
// reported with its own index and line.
var listItemChecks = map[string]func(string) error{
	"allow":               func(s string) error { _, err := netfilter.ParseEntry(s); return err },
	"proxy-protocol-from": func(s string) error { _, err := netfilter.ParseEntry(s); return err },
}

// parseValue records the value of flag f from node n.
func (fc *fileConfig) parseValue(f cli.Flag, n *yaml.Node, key string) []problem {
	name := f.Names()[0]
	kind := fc.kinds[name]
	if kind == kindList {
		vals, nodes, probs := fc.list(n, key)
		fv := fileValue{key: key, line: n.Line}
		for i, v := range vals {
			if check := listItemChecks[name]; check != nil {
				if err := check(v); err != nil {
					probs = append(probs, fc.at(nodes[i], fmt.Sprintf("%s[%d]", key, i), "%v", err))
					continue
				}
			}
			fv.vals = append(fv.vals, v)
			fv.lines = append(fv.lines, nodes[i].Line)
		}
		if len(probs) == 0 {
			fc.values[name] = fv
		}
		return probs
	}
	v, p := fc.scalar(n, key)
	if p != nil {
		return []problem{*p}
	}
	if err := checkScalar(kind, v); err != nil {
		return []problem{fc.at(n, key, "%v", err)}
	}
	fc.values[name] = fileValue{key: key, line: n.Line, vals: []string{v}, lines: []int{n.Line}}
	return nil
}

// flagProblem turns a start-up error into a problem that names the key and
// line if the flag at fault got its value from the file.
func (fc *fileConfig) flagProblem(err error) problem {
	var ce *configError
	if !errors.As(err, &ce) || ce.flag == "" {
		return problem{msg: err.Error()}
	}
	name := strings.TrimPrefix(ce.flag, "--")
	if fc != nil {
		if v, ok := fc.values[name]; ok {
			return problem{file: fc.path, line: v.line, key: v.key, msg: ce.err.Error()}
		}
	}
	return problem{key: ce.flag, msg: ce.err.Error()}
}
