package config

import (
	"fmt"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/tunnel-dev/tunnel/client"
	"github.com/tunnel-dev/tunnel/server"
)

// The list keys of reverse tunnels: a server's exposes and a client's
// publications. Each item is the flag's text or a mapping; a mapping is
// turned into the flag's text, which server.ParseExpose or
// client.ParsePublish then reads, so that the two forms mean the same.

// parseExposes reads the exposes list: each item is
// "LISTEN=NAME,allow=CIDR,publisher=RULE,..." or a mapping with listen,
// name, allow, publishers, max_conns_per_addr and
// max_streams_per_publisher.
func (fc *fileConfig) parseExposes(n *yaml.Node, key string) []Problem {
	return fc.parseSpecs(n, key, "exposes", fc.exposeSpec, func(spec string) error {
		_, _, err := server.ParseExpose(spec)
		return err
	})
}

// parsePublish reads the publish list: each item is
// "NAME=TARGET[,proxy-v2]" or a mapping with name, target and options.
func (fc *fileConfig) parsePublish(n *yaml.Node, key string) []Problem {
	return fc.parseSpecs(n, key, "publications", fc.publishSpec, func(spec string) error {
		_, err := client.ParsePublish(spec)
		return err
	})
}

// parseSpecs reads a list whose items are a spec or a mapping that
// mapping turns into one, each checked by parse, into the values of key.
func (fc *fileConfig) parseSpecs(n *yaml.Node, key, what string, mapping func(*yaml.Node, string) (string, []Problem), parse func(string) error) []Problem {
	if n.Kind != yaml.SequenceNode {
		return []Problem{fc.at(n, key, "want a list of %s", what)}
	}
	fv := fileValue{key: key, line: n.Line}
	var probs []Problem
	for i, item := range n.Content {
		path := fmt.Sprintf("%s[%d]", key, i)
		var spec string
		switch item.Kind {
		case yaml.ScalarNode:
			v, p := fc.scalar(item, path)
			if p != nil {
				probs = append(probs, *p)
				continue
			}
			spec = v
		case yaml.MappingNode:
			s, ps := mapping(item, path)
			if len(ps) > 0 {
				probs = append(probs, ps...)
				continue
			}
			spec = s
		default:
			probs = append(probs, fc.at(item, path, "want the flag's text or a mapping"))
			continue
		}
		if err := parse(spec); err != nil {
			probs = append(probs, fc.at(item, path, "%v", err))
			continue
		}
		fv.vals = append(fv.vals, spec)
		fv.lines = append(fv.lines, item.Line)
	}
	if len(probs) == 0 {
		fc.values[key] = fv
	}
	return probs
}

// specWriter collects the parts of a spec from a mapping's keys.
type specWriter struct {
	fc    *fileConfig
	path  string
	probs []Problem
}

// value reads a scalar that becomes part of a spec: it may not hold a
// comma, which separates the spec's options.
func (w *specWriter) value(n *yaml.Node, key string) string {
	v, p := w.fc.scalar(n, key)
	if p != nil {
		w.probs = append(w.probs, *p)
		return ""
	}
	if strings.Contains(v, ",") {
		w.probs = append(w.probs, w.fc.at(n, key, "%q: a comma cannot be written here", v))
		return ""
	}
	return v
}

// values reads a list of such scalars (or one).
func (w *specWriter) values(n *yaml.Node, key string) []string {
	vals, nodes, ps := w.fc.list(n, key)
	w.probs = append(w.probs, ps...)
	var out []string
	for i, v := range vals {
		if strings.Contains(v, ",") {
			w.probs = append(w.probs, w.fc.at(nodes[i], fmt.Sprintf("%s[%d]", key, i), "%q: a comma cannot be written here", v))
			continue
		}
		out = append(out, v)
	}
	if len(vals) == 0 && len(ps) == 0 {
		w.probs = append(w.probs, w.fc.at(n, key, "empty list"))
	}
	return out
}

// each calls f with each key of mapping m, refusing a key given twice
// and, via f returning false, one f does not know (known lists them).
func (w *specWriter) each(m *yaml.Node, known string, f func(k string, v *yaml.Node, kp string) bool) {
	seen := map[string]bool{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		kn, vn := m.Content[i], m.Content[i+1]
		kp := w.path + "." + kn.Value
		if seen[kn.Value] {
			w.probs = append(w.probs, w.fc.at(kn, kp, "given twice"))
			continue
		}
		seen[kn.Value] = true
		if !f(kn.Value, vn, kp) {
			w.probs = append(w.probs, w.fc.at(kn, kp, "unknown key (%s)", known))
		}
	}
}

// require records a problem for each of keys the mapping m lacks.
func (w *specWriter) require(m *yaml.Node, got map[string]string, keys ...string) {
	for _, k := range keys {
		if got[k] == "" {
			w.probs = append(w.probs, w.fc.at(m, w.path+"."+k, "required"))
		}
	}
}

// exposeSpec turns an exposes item's mapping into --expose's text.
func (fc *fileConfig) exposeSpec(m *yaml.Node, path string) (string, []Problem) {
	w := &specWriter{fc: fc, path: path}
	got := map[string]string{}
	var opts []string
	w.each(m, "an expose has listen, name, allow, publishers, max_conns_per_addr and max_streams_per_publisher", func(k string, v *yaml.Node, kp string) bool {
		switch k {
		case "listen", "name":
			got[k] = w.value(v, kp)
		case "allow":
			for _, a := range w.values(v, kp) {
				opts = append(opts, "allow="+a)
			}
		case "publishers":
			for _, r := range w.values(v, kp) {
				opts = append(opts, "publisher="+r)
			}
		case "max_conns_per_addr", "max_streams_per_publisher":
			s := w.value(v, kp)
			if n, err := strconv.Atoi(s); s != "" && (err != nil || n < 0) {
				w.probs = append(w.probs, fc.at(v, kp, "%q is not a number of 0 or more", s))
			}
			opts = append(opts, strings.ReplaceAll(k, "_", "-")+"="+s)
		default:
			return false
		}
		return true
	})
	w.require(m, got, "listen", "name")
	return strings.Join(append([]string{got["listen"] + "=" + got["name"]}, opts...), ","), w.probs
}

// publishSpec turns a publish item's mapping into --publish's text.
func (fc *fileConfig) publishSpec(m *yaml.Node, path string) (string, []Problem) {
	w := &specWriter{fc: fc, path: path}
	got := map[string]string{}
	var opts []string
	w.each(m, "a publication has name, target and options", func(k string, v *yaml.Node, kp string) bool {
		switch k {
		case "name", "target":
			got[k] = w.value(v, kp)
		case "options":
			opts = w.values(v, kp)
		default:
			return false
		}
		return true
	})
	w.require(m, got, "name", "target")
	return strings.Join(append([]string{got["name"] + "=" + got["target"]}, opts...), ","), w.probs
}
