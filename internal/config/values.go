package config

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tunnel-dev/tunnel/client"
	"github.com/tunnel-dev/tunnel/internal/reload"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/server"
	"github.com/tunnel-dev/tunnel/trust"
)

// Values are one resolution of an Input: the text of every setting's
// value, and where it came from. They are never modified once resolved.
type Values struct {
	in    *Input
	byKey map[string]*Setting
	file  *fileConfig         // nil without a config file
	vals  map[string][]string // by key: given, else the file's, else the default
}

// Resolve reads the config file, if any, and resolves every setting of in:
// the value given on the command line or in the environment, else the
// file's, else the default. It returns every problem of the file, each with
// its line and key path; the Values then hold what had none (a value with a
// problem falls back to its default), so that `tunnel check` can go on and
// report what else is wrong. The Values are nil only if the file could not
// be parsed at all. Safe to call from any goroutine, again at every reload.
func Resolve(in *Input) (*Values, []Problem) {
	v := &Values{in: in, byKey: make(map[string]*Setting, len(in.Settings)), vals: map[string][]string{}}
	for i := range in.Settings {
		v.byKey[in.Settings[i].Key] = &in.Settings[i]
	}
	var probs []Problem
	if in.File != "" {
		v.file, probs = parseFile(in.File, in.FileFlag, v.byKey)
		if v.file == nil {
			return nil, probs
		}
		if _, ok := in.Given[keyRoutes]; ok {
			v.file.access = nil // routes from a flag replace the file's, rules and all
		}
		for key := range in.Given {
			delete(v.file.values, key) // overridden: problems name the flag
			delete(v.file.broken, key)
		}
	}
	for _, st := range in.Settings {
		vals, ok := in.Given[st.Key]
		if !ok && v.file != nil {
			var fv fileValue
			fv, ok = v.file.values[st.Key]
			vals = fv.vals
		}
		if !ok {
			vals = st.Default
		}
		v.vals[st.Key] = vals
	}
	return v, probs
}

// At returns a problem with the value of key: where the value came from
// (the file's line and key path, or the flag) and format's message.
func (v *Values) At(key, format string, args ...any) Problem {
	msg := fmt.Sprintf(format, args...)
	if v.fromFile(key) {
		fv := v.file.values[key]
		return Problem{File: v.file.path, Line: fv.line, Key: fv.key, Msg: msg}
	}
	if st := v.byKey[key]; st != nil {
		return Problem{Key: st.Flag, Msg: msg}
	}
	return Problem{Key: key, Msg: msg}
}

// Problem turns an error of a library (a server, client, netfilter or
// trust FieldError, a trust.LoadError, a client.ListenError) into the
// problem of the setting whose Fields name the field at fault, at where its
// value came from. Any other error is a problem of no one setting.
func (v *Values) Problem(err error) Problem {
	key, msg := v.keyOf(err)
	if key == "" {
		return Problem{Msg: err.Error()}
	}
	return v.At(key, "%s", msg)
}

// keyOf returns the key of the setting err names, and what err says of its
// value; "" if err names no setting.
func (v *Values) keyOf(err error) (key, msg string) {
	field, msg := fieldOf(err)
	if field == "" {
		return "", ""
	}
	for _, st := range v.in.Settings {
		if slices.Contains(st.Fields, field) {
			return st.Key, msg
		}
	}
	return "", ""
}

// fieldOf returns the library field err names ("server.Config.DialTimeout")
// and what it says of its value, or "" for an error that names none.
func fieldOf(err error) (field, msg string) {
	if e, ok := errors.AsType[*server.FieldError](err); ok {
		return "server.Config." + e.Field, e.Err.Error()
	}
	if e, ok := errors.AsType[*client.FieldError](err); ok {
		return "client.Config." + e.Field, e.Err.Error()
	}
	if e, ok := errors.AsType[*client.ListenError](err); ok {
		return "client.Config.Forwards", fmt.Sprintf("%s=%s: %v", e.Forward.Listen, e.Forward.Route, e.Err)
	}
	if e, ok := errors.AsType[*netfilter.FieldError](err); ok {
		return "netfilter.FilterConfig." + e.Field, e.Err.Error()
	}
	if e, ok := errors.AsType[*trust.LoadError](err); ok {
		return "trust.Sources." + e.Field, fmt.Sprintf("%q: %v", e.Path, e.Err)
	}
	if e, ok := errors.AsType[*trust.FieldError](err); ok {
		return "trust.RevocationPolicy." + e.Field, e.Err.Error()
	}
	if e, ok := errors.AsType[*trust.SPIFFEError](err); ok {
		return "trust.SPIFFEConfig.Addr", e.Error()
	}
	if e, ok := errors.AsType[*reload.FieldError](err); ok {
		return "reload.Config." + e.Field, e.Err.Error()
	}
	return "", ""
}

// fromFile reports whether the value of key came from the config file.
func (v *Values) fromFile(key string) bool {
	if v.file == nil {
		return false
	}
	_, ok := v.file.values[key]
	return ok
}

// broken reports whether the config file's value of key had a problem.
func (v *Values) broken(key string) bool { return v.file != nil && v.file.broken[key] }

// Where names where the value of key came from, for a warning: its key
// path in the config file, or its flag.
func (v *Values) Where(key string) string {
	if v.fromFile(key) {
		return v.file.values[key].key
	}
	return v.byKey[key].Flag
}

// Flag returns the flag of the setting key, for messages that name another
// setting.
func (v *Values) Flag(key string) string { return v.byKey[key].Flag }

// Changed returns the keys, in the order of the settings, whose values
// differ between v and old, leaving out those in except.
func (v *Values) Changed(old *Values, except []string) []string {
	var out []string
	for _, st := range v.in.Settings {
		if !slices.Contains(except, st.Key) && !slices.Equal(v.vals[st.Key], old.vals[st.Key]) {
			out = append(out, st.Key)
		}
	}
	return out
}

// Get returns the resolved text of key's value: one item for a scalar,
// none for a setting without a value.
func (v *Values) Get(key string) []string { return slices.Clone(v.vals[key]) }

// text returns the single value of key, or "".
func (v *Values) text(key string) string {
	if vals := v.vals[key]; len(vals) > 0 {
		return vals[0]
	}
	return ""
}

// list returns the entries of a list setting (see SplitValues).
func (v *Values) list(key, sep string) []string { return SplitValues(v.vals[key], sep) }

// SplitValues returns the entries of a repeatable value: each occurrence
// (a flag, the environment variable, an item of the file) may hold
// several, separated by sep characters and white space.
func SplitValues(vals []string, sep string) []string {
	var out []string
	for _, s := range vals {
		out = append(out, strings.FieldsFunc(s, func(r rune) bool {
			return strings.ContainsRune(sep, r) || r == ' ' || r == '\t' || r == '\n'
		})...)
	}
	return out
}

// Typed values. The text was checked when it was read (a flag by the edge,
// the file by parseValue); a default that does not parse is the edge's
// mistake, reported as a problem of its setting.

func (v *Values) boolean(ps *problems, key string) bool {
	b, err := strconv.ParseBool(v.text(key))
	if err != nil {
		ps.at(key, "%v", err)
	}
	return b
}

func (v *Values) duration(ps *problems, key string) time.Duration {
	d, err := time.ParseDuration(v.text(key))
	if err != nil {
		ps.at(key, "%v", err)
	}
	return d
}

func (v *Values) integer(ps *problems, key string) int64 {
	n, err := strconv.ParseInt(v.text(key), 0, 64)
	if err != nil {
		ps.at(key, "%v", err)
	}
	return n
}

// Paths are the files the settings of v are read from: the TLS files (for
// a key in a PKCS#11 token, its PIN file), the OCSP staple file and the
// config file, what a reload watches.
func (v *Values) Paths() []string {
	p := v.sources().Paths()
	for _, f := range []string{v.text("ocsp.staple_file"), v.in.File} {
		if f != "" && !slices.Contains(p, f) {
			p = append(p, f)
		}
	}
	return p
}

// sources are the TLS files of v.
func (v *Values) sources() trust.Sources {
	return trust.Sources{CertFile: v.text("tls.cert"), KeyFile: v.text("tls.key"), CAFile: v.text("tls.ca"), CRLFiles: v.list("crl.files", ",")}
}
