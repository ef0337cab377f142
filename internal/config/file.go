package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/server"
)

// The config file (docs/CONFIG.md) is YAML whose keys are the settings'
// keys: a dotted key ("tls.cert") sits in a section (tls: {cert: ...}). Four
// list keys hold mappings: a server's routes, with their rules, and
// exposes, a client's forwards and publications. Everything else in the file is an error, reported with
// its line.

// Keys of the settings the file parser treats specially.
const (
	keyRoutes   = "routes"
	keyForwards = "forwards"
	keyExposes  = "exposes"
	keyPublish  = "publish"
)

// fileValue is what a config file says for one setting.
type fileValue struct {
	key   string   // key path, "tls.cert"
	line  int      // of the value
	vals  []string // one for a scalar
	lines []int    // line of each of vals
}

// fileConfig is one parse of a config file, checked against the settings.
type fileConfig struct {
	path   string
	byKey  map[string]*Setting
	values map[string]fileValue      // by key
	access map[string]*server.Access // route rules by route name; nil if the routes came from a flag
	routes map[string]string         // key path of each route of the file, by name ("routes[1]")
	broken map[string]bool           // keys whose value in the file has a problem
	ruled  bool                      // some route of the file has rules
}

// listItemChecks check one item of a list setting, so that a bad item is
// reported with its own index and line.
var listItemChecks = map[string]func(string) error{
	"allow":               func(s string) error { _, err := netfilter.ParseEntry(s); return err },
	"proxy_protocol_from": func(s string) error { _, err := netfilter.ParseEntry(s); return err },
}

// parseFile reads and checks the config file at path against byKey. Every
// problem found is returned, each with its line and key path; the
// fileConfig is nil only if the file could not be parsed at all. flag names
// the setting that names the file, for a file that cannot be read.
func parseFile(path, flag string, byKey map[string]*Setting) (*fileConfig, []Problem) {
	fc := &fileConfig{path: path, byKey: byKey, values: map[string]fileValue{}, broken: map[string]bool{}}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, []Problem{{Key: flag, Msg: err.Error()}}
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, []Problem{{File: path, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	if len(doc.Content) == 0 {
		return fc, nil // an empty file sets nothing
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, []Problem{{File: path, Line: root.Line, Msg: "want a mapping of keys to values at the top level"}}
	}
	return fc, fc.parseMapping(root, "")
}

// parseMapping parses the keys of m, which sits at key path prefix ("" for
// the top level, "tls" for a section).
func (fc *fileConfig) parseMapping(m *yaml.Node, prefix string) []Problem {
	var probs []Problem
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
		st, known := fc.byKey[path]
		var ps []Problem
		switch {
		case known && path == keyRoutes:
			ps = fc.parseRoutes(vn, path)
		case known && path == keyForwards:
			ps = fc.parseForwards(vn, path)
		case known && path == keyExposes:
			ps = fc.parseExposes(vn, path)
		case known && path == keyPublish:
			ps = fc.parsePublish(vn, path)
		case known:
			ps = fc.parseValue(st, vn, path)
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
			fc.broken[path] = true
			probs = append(probs, ps...)
		}
	}
	return probs
}

// isSection reports whether some key lives under section.
func (fc *fileConfig) isSection(section string) bool {
	for k := range fc.byKey {
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
	for k := range fc.byKey {
		if norm(k) == norm(path) || norm(k) == norm(strings.TrimPrefix(path, "tls.")) {
			return fmt.Sprintf(" (did you mean %s?)", k)
		}
	}
	// A flag name used as a key, "handshake-timeout" for handshake_timeout.
	for k, st := range fc.byKey {
		if strings.TrimLeft(st.Flag, "-") == path {
			return fmt.Sprintf(" (did you mean %s?)", k)
		}
	}
	return ""
}

// at returns a problem at node n's line.
func (fc *fileConfig) at(n *yaml.Node, key, format string, args ...any) Problem {
	return Problem{File: fc.path, Line: n.Line, Key: key, Msg: fmt.Sprintf(format, args...)}
}

// scalar returns the text of a scalar node, or a problem.
func (fc *fileConfig) scalar(n *yaml.Node, key string) (string, *Problem) {
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
func (fc *fileConfig) list(n *yaml.Node, key string) ([]string, []*yaml.Node, []Problem) {
	if n.Kind == yaml.ScalarNode && n.Tag != "!!null" {
		return []string{n.Value}, []*yaml.Node{n}, nil
	}
	if n.Kind != yaml.SequenceNode {
		return nil, nil, []Problem{fc.at(n, key, "want a list of values")}
	}
	var vals []string
	var nodes []*yaml.Node
	var probs []Problem
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

// parseValue records the value of setting st from node n.
func (fc *fileConfig) parseValue(st *Setting, n *yaml.Node, key string) []Problem {
	if st.Kind == List {
		vals, nodes, probs := fc.list(n, key)
		fv := fileValue{key: key, line: n.Line}
		for i, v := range vals {
			if check := listItemChecks[st.Key]; check != nil {
				if err := check(v); err != nil {
					probs = append(probs, fc.at(nodes[i], fmt.Sprintf("%s[%d]", key, i), "%v", err))
					continue
				}
			}
			fv.vals = append(fv.vals, v)
			fv.lines = append(fv.lines, nodes[i].Line)
		}
		if len(probs) == 0 {
			fc.values[st.Key] = fv
		}
		return probs
	}
	v, p := fc.scalar(n, key)
	if p != nil {
		return []Problem{*p}
	}
	if err := st.Kind.check(v); err != nil {
		return []Problem{fc.at(n, key, "%v", err)}
	}
	fc.values[st.Key] = fileValue{key: key, line: n.Line, vals: []string{v}, lines: []int{n.Line}}
	return nil
}
