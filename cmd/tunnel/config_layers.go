package main

import (
	"flag"
	"fmt"
	"slices"

	"github.com/urfave/cli/v2"
)

// The layers of a configuration: the command line and environment, captured
// once at start-up, over the config file, read at start-up and at every
// reload, over the flags' defaults.

// flagLayers is the command line and environment of one command, captured
// at start-up, and the flags' defaults: what every (re)load of the config
// file is resolved against.
type flagLayers struct {
	cmd      *cli.Context        // the command's context, for App and Command only
	flags    []cli.Flag          // the command's flags, in order
	kinds    map[string]flagKind // by flag name
	explicit map[string][]string // values from the command line or environment
	defaults map[string][]string // values of the flags not set
	cfgPath  string              // --config, or ""
}

// captureFlags records the command line and environment of c. It is called
// once, from the command's action; nothing it returns refers to c's
// mutable state, so resolve may run on another goroutine later.
func captureFlags(c *cli.Context) (*flagLayers, error) {
	if c.Args().Len() > 0 {
		return nil, &configError{err: fmt.Errorf("unexpected argument %q", c.Args().First())}
	}
	l := &flagLayers{cmd: c, kinds: map[string]flagKind{}, explicit: map[string][]string{}, defaults: map[string][]string{}}
	for _, f := range c.Command.Flags {
		name := f.Names()[0]
		kind, err := kindOf(f)
		if err != nil {
			kind = kindString // passed through as text; it has no key
		}
		l.flags = append(l.flags, f)
		l.kinds[name] = kind
		var vals []string
		if kind == kindList {
			vals = slices.Clone(c.StringSlice(name))
		} else {
			vals = []string{fmt.Sprint(c.Value(name))}
		}
		if c.IsSet(name) {
			l.explicit[name] = vals
		} else {
			l.defaults[name] = vals
		}
	}
	if v, ok := l.explicit[configFlagName]; ok && len(v) == 1 {
		l.cfgPath = v[0]
		if l.cfgPath == "" {
			return nil, flagError("--config", "empty file name")
		}
	}
	return l, nil
}

// resolve reads the config file (if any) and returns a context whose flag
// values are the command line's, else the environment's, else the file's,
// else the defaults; and the parsed file (nil without one). A file with
// problems returns them all in a *problemsError, which is a config error.
// Safe to call from any goroutine, again at every reload.
func (l *flagLayers) resolve() (*cli.Context, *fileConfig, error) {
	c, fc, probs, err := l.resolveAll()
	if err == nil && len(probs) > 0 {
		err = &configError{err: &problemsError{list: probs}}
	}
	if err != nil {
		return nil, nil, err
	}
	return c, fc, nil
}

// resolveAll is resolve that goes on past the file's problems, with the
// values that had none, so that `tunnel check` can report what else is
// wrong. The context is nil only if the file could not be parsed at all.
func (l *flagLayers) resolveAll() (*cli.Context, *fileConfig, []problem, error) {
	var fc *fileConfig
	var probs []problem
	if l.cfgPath != "" {
		fc, probs = parseConfigFile(l.cfgPath, l.flags)
		if fc == nil {
			return nil, nil, probs, nil
		}
		if _, ok := l.explicit["route"]; ok {
			fc.access = nil // routes from a flag replace the file's, rules and all
		}
		for name := range l.explicit {
			delete(fc.values, name) // overridden: problems name the flag
			delete(fc.broken, name)
		}
	}
	fs := flag.NewFlagSet(l.cmd.Command.Name, flag.ContinueOnError)
	for _, f := range l.flags {
		name := f.Names()[0]
		vals, set := l.explicit[name]
		if !set && fc != nil {
			if fv, ok := fc.values[name]; ok {
				vals, set = fv.vals, true
			}
		}
		if !set {
			vals = l.defaults[name]
		}
		if sf, ok := f.(*cli.StringSliceFlag); ok {
			// A copy of the parsed flag registers a value that splits (or,
			// with the app's DisableSliceFlagSeparator, keeps) commas as
			// the command line did; the environment is already in explicit.
			cp := *sf
			cp.EnvVars, cp.FilePath, cp.Destination = nil, "", nil
			if err := cp.Apply(fs); err != nil {
				return nil, nil, probs, flagError("--"+name, "%v", err)
			}
		} else {
			def := ""
			if d := l.defaults[name]; len(d) == 1 {
				def = d[0]
			}
			fs.Var(&textValue{s: def}, name, "")
		}
		if !set {
			continue
		}
		for _, v := range vals {
			if err := fs.Set(name, v); err != nil {
				return nil, nil, probs, flagError("--"+name, "%v", err)
			}
		}
	}
	c := cli.NewContext(l.cmd.App, fs, nil)
	c.Context = l.cmd.Context
	c.Command = l.cmd.Command
	return c, fc, probs, nil
}

// fromFile reports whether the flag named name took its value from the file.
func (l *flagLayers) fromFile(fc *fileConfig, name string) bool {
	if fc == nil {
		return false
	}
	_, explicit := l.explicit[name]
	_, inFile := fc.values[name]
	return inFile && !explicit
}

// textValue is a flag.Value holding text; urfave/cli's typed getters parse
// its String(), so it stands in for every scalar flag type.
type textValue struct{ s string }

func (v *textValue) String() string     { return v.s }
func (v *textValue) Set(s string) error { v.s = s; return nil }
func (v *textValue) Get() any           { return v.s }
