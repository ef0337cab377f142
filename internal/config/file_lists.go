package config

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/tunnel-dev/tunnel/client"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/server"
)

// The two list keys of a config file that hold mappings: a server's routes
// with their rules, and a client's forwards.

// parseRoutes reads the routes list: each item is "NAME=TARGET[,OPTION]..."
// or a mapping with name, target, options, allow_identities and allow.
func (fc *fileConfig) parseRoutes(n *yaml.Node, key string) []Problem {
	if n.Kind != yaml.SequenceNode {
		return []Problem{fc.at(n, key, "want a list of routes")}
	}
	fc.access = map[string]*server.Access{}
	fc.routes = map[string]string{}
	fv := fileValue{key: key, line: n.Line}
	var probs []Problem
	for i, item := range n.Content {
		path := fmt.Sprintf("%s[%d]", key, i)
		spec, access, nameNode, ps := fc.parseRoute(item, path)
		if len(ps) > 0 {
			probs = append(probs, ps...)
			continue
		}
		r, err := server.ParseRoute(spec)
		if err != nil {
			probs = append(probs, fc.at(item, path, "%v", err))
			continue
		}
		if _, dup := fc.routes[r.Name]; dup {
			probs = append(probs, fc.at(nameNode, path+".name", "route %q is configured twice", r.Name))
			continue
		}
		fc.routes[r.Name] = path
		if access != nil {
			access.Name = key + "." + r.Name
			fc.access[r.Name] = access
			fc.ruled = true
		}
		fv.vals = append(fv.vals, spec)
		fv.lines = append(fv.lines, item.Line)
	}
	if len(probs) == 0 {
		fc.values[keyRoutes] = fv
	}
	return probs
}

// parseRoute reads one item of the routes list.
func (fc *fileConfig) parseRoute(item *yaml.Node, path string) (spec string, access *server.Access, nameNode *yaml.Node, probs []Problem) {
	if item.Kind == yaml.ScalarNode {
		v, p := fc.scalar(item, path)
		if p != nil {
			return "", nil, item, []Problem{*p}
		}
		return v, nil, item, nil
	}
	if item.Kind != yaml.MappingNode {
		return "", nil, item, []Problem{fc.at(item, path, "want NAME=TARGET or a mapping with name and target")}
	}
	var name, target string
	var opts []string
	nameNode = item
	seen := map[string]bool{}
	for i := 0; i+1 < len(item.Content); i += 2 {
		kn, vn := item.Content[i], item.Content[i+1]
		kp := path + "." + kn.Value
		if seen[kn.Value] {
			probs = append(probs, fc.at(kn, kp, "given twice"))
			continue
		}
		seen[kn.Value] = true
		switch kn.Value {
		case "name":
			v, p := fc.scalar(vn, kp)
			if p != nil {
				probs = append(probs, *p)
			}
			name, nameNode = v, vn
		case "target":
			v, p := fc.scalar(vn, kp)
			if p != nil {
				probs = append(probs, *p)
			}
			target = v
		case "options":
			vals, _, ps := fc.list(vn, kp)
			probs = append(probs, ps...)
			opts = vals
		case "allow_identities":
			vals, nodes, ps := fc.list(vn, kp)
			probs = append(probs, ps...)
			if access == nil {
				access = &server.Access{}
			}
			for j, v := range vals {
				r, err := server.ParseIdentityRule(v)
				if err != nil {
					probs = append(probs, fc.at(nodes[j], fmt.Sprintf("%s[%d]", kp, j), "%v", err))
					continue
				}
				access.Identities = append(access.Identities, r)
			}
			if len(vals) == 0 && len(ps) == 0 {
				probs = append(probs, fc.at(vn, kp, "empty: leave the key out to admit every verified client"))
			}
		case "allow":
			vals, nodes, ps := fc.list(vn, kp)
			probs = append(probs, ps...)
			for j, v := range vals {
				if _, err := netfilter.ParseEntry(v); err != nil {
					probs = append(probs, fc.at(nodes[j], fmt.Sprintf("%s[%d]", kp, j), "%v", err))
				}
			}
			if len(vals) == 0 && len(ps) == 0 {
				probs = append(probs, fc.at(vn, kp, "empty: it would admit no address; leave the key out to admit every allowed address"))
			}
			if al, err := netfilter.ParseAllowlist(vals); err == nil && len(vals) > 0 {
				if access == nil {
					access = &server.Access{}
				}
				access.Allow = al
			}
		default:
			probs = append(probs, fc.at(kn, kp, "unknown key (a route has name, target, options, allow_identities and allow)"))
		}
	}
	if name == "" && !seen["name"] {
		probs = append(probs, fc.at(item, path+".name", "required"))
	}
	if target == "" && !seen["target"] {
		probs = append(probs, fc.at(item, path+".target", "required"))
	}
	spec = name + "=" + target
	if len(opts) > 0 {
		spec += "," + strings.Join(opts, ",")
	}
	return spec, access, nameNode, probs
}

// parseForwards reads the forwards list: each item is "[HOST:]PORT=ROUTE"
// or a mapping with listen and route.
func (fc *fileConfig) parseForwards(n *yaml.Node, key string) []Problem {
	return fc.parseSpecs(n, key, "forwards", fc.forwardSpec, func(spec string) error {
		_, err := client.ParseForward(spec)
		return err
	})
}

// forwardSpec turns a forwards item's mapping into --forward's text.
func (fc *fileConfig) forwardSpec(m *yaml.Node, path string) (string, []Problem) {
	w := &specWriter{fc: fc, path: path}
	got := map[string]string{}
	w.each(m, "a forward has listen and route", func(k string, v *yaml.Node, kp string) bool {
		if k != "listen" && k != "route" {
			return false
		}
		got[k] = w.value(v, kp)
		return true
	})
	return got["listen"] + "=" + got["route"], w.probs
}
