package config

import (
	"fmt"
	"strings"
)

// Problem is one thing wrong with a configuration: where (the config file
// and line with the key path, or the flag of a value given on the command
// line or in the environment) and what.
type Problem struct {
	File string // the config file, or "" for a flag or variable
	Line int    // 1-based line in File, or 0
	Key  string // key path ("routes[0].allow[1]") or flag ("--allow"); "" if no one value is at fault
	Msg  string
}

// String is the problem as an operator reads it: "server.yaml:7:
// dial_timeout: "soon" is not a duration", "--allow: required".
func (p Problem) String() string {
	var b strings.Builder
	if p.File != "" {
		b.WriteString(p.File)
		if p.Line > 0 {
			fmt.Fprintf(&b, ":%d", p.Line)
		}
		b.WriteString(": ")
	}
	if p.Key != "" {
		b.WriteString(p.Key + ": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// problems collects Problems, one per key at most, leaving out the keys
// whose value in the config file had a problem already.
type problems struct {
	v    *Values
	list []Problem
	seen map[string]bool
}

// add records p unless a problem was recorded for its key already.
func (ps *problems) add(p Problem) {
	if p.Key != "" {
		if ps.seen[p.Key] {
			return
		}
		if ps.seen == nil {
			ps.seen = map[string]bool{}
		}
		ps.seen[p.Key] = true
	}
	ps.list = append(ps.list, p)
}

// at records a problem with the value of key, unless that value's problem
// in the config file was recorded already.
func (ps *problems) at(key, format string, args ...any) {
	if ps.v.broken(key) {
		return
	}
	ps.add(ps.v.At(key, format, args...))
}

// err records err, a library error, as the problem of the setting it names
// (see Values.Problem).
func (ps *problems) err(err error) {
	if err == nil {
		return
	}
	if key, _ := ps.v.keyOf(err); key != "" && ps.v.broken(key) {
		return
	}
	ps.add(ps.v.Problem(err))
}
