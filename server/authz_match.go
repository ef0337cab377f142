package server

import (
	"fmt"
	"strings"
)

// The wildcard grammar of dns: and uri: identity rules. docs/CONFIG.md
// states it as a table of examples, and authz_doc_test.go runs that table.

// maxHostName is the longest host name in text form, without a final dot.
const maxHostName = 253

// checkDNSPattern accepts a lowercased host name whose labels are RFC 1123
// labels or "*".
func checkDNSPattern(pat string) error {
	if len(pat) > maxHostName {
		return fmt.Errorf("longer than %d bytes", maxHostName)
	}
	for _, l := range strings.Split(pat, ".") {
		switch {
		case l == "":
			return fmt.Errorf("empty DNS label")
		case l == "*":
		case strings.Contains(l, "*"):
			return fmt.Errorf("%q: a wildcard must be a whole label", l)
		case !hostLabel(l):
			return fmt.Errorf("%q is not a host name label (letters, digits and inner hyphens, at most 63)", l)
		}
	}
	return nil
}

// hostLabel reports whether l is an RFC 1123 host name label: 1 to 63
// ASCII letters, digits and hyphens, not starting or ending with a hyphen.
func hostLabel(l string) bool {
	if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// matchDNS matches a lowercased pattern against a DNS SAN label by label.
// The SAN must be a valid host name (one final dot allowed, case ignored);
// "*" matches exactly one label of it.
func matchDNS(pat, name string) bool {
	name = strings.TrimSuffix(name, ".")
	if len(name) > maxHostName {
		return false
	}
	pl := strings.Split(pat, ".")
	nl := strings.Split(name, ".")
	if len(pl) != len(nl) {
		return false
	}
	for i := range pl {
		if !hostLabel(nl[i]) || pl[i] != "*" && !strings.EqualFold(pl[i], nl[i]) {
			return false
		}
	}
	return true
}

// checkURIPattern allows "*" only at the end of a path segment, not in the
// scheme or authority, no dot segments, and no "%" that does not start a
// percent-encoding (a stem "a%" would let "*" complete "%2e").
func checkURIPattern(pat string) error {
	scheme, rest, ok := strings.Cut(pat, "://")
	if !ok || scheme == "" {
		return fmt.Errorf("%q is not an absolute URI (scheme://...)", pat)
	}
	authority, path, _ := strings.Cut(rest, "/")
	if strings.Contains(scheme, "*") || strings.Contains(authority, "*") {
		return fmt.Errorf("wildcards are allowed in the path only")
	}
	for i := 0; i < len(path); i++ {
		if path[i] == '%' && (i+2 >= len(path) || !isHex(path[i+1]) || !isHex(path[i+2])) {
			return fmt.Errorf("%q: a %% must start a percent-encoding (%%XX)", path)
		}
	}
	for _, seg := range strings.Split(path, "/") {
		if seg == "." || seg == ".." {
			return fmt.Errorf("segment %q: no dot segments", seg)
		}
		if i := strings.IndexByte(seg, '*'); i >= 0 && i != len(seg)-1 {
			return fmt.Errorf("segment %q: a wildcard may only end a path segment", seg)
		}
		if strings.ContainsAny(seg, "?#") && strings.Contains(seg, "*") {
			return fmt.Errorf("segment %q: no wildcard next to a query or fragment", seg)
		}
	}
	return nil
}

// matchURI matches segment by segment (split at "/"): a pattern segment
// ending in "*" matches a segment that starts with the rest, has at least
// one more character, and passes wildSegment; other segments match exactly.
func matchURI(pat, uri string) bool {
	ps := strings.Split(pat, "/")
	us := strings.Split(uri, "/")
	if len(ps) != len(us) {
		return false
	}
	for i := range ps {
		stem, wild := strings.CutSuffix(ps[i], "*")
		if !wild {
			if ps[i] != us[i] {
				return false
			}
			continue
		}
		tail, ok := strings.CutPrefix(us[i], stem)
		if !ok || !wildSegment(us[i], tail) {
			return false
		}
	}
	return true
}

// wildSegment reports whether tail, the part of segment seg a "*" stands
// for, may match: at least one character, all RFC 3986 path characters
// (unreserved, sub-delims, ":", "@", or a well-formed percent-encoding),
// no percent-encoded "/", "." or "%", and seg not a dot segment.
func wildSegment(seg, tail string) bool {
	if tail == "" || seg == "." || seg == ".." {
		return false
	}
	for i := 0; i < len(tail); i++ {
		c := tail[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("-._~!$&'()*+,;=:@", c) >= 0:
		case c == '%':
			if i+2 >= len(tail) || !isHex(tail[i+1]) || !isHex(tail[i+2]) {
				return false
			}
			switch strings.ToUpper(tail[i+1 : i+3]) {
			case "2F", "2E", "25": // "/", "." and "%": a path, a dot segment or a double encoding in disguise
				return false
			}
			i += 2
		default:
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}
