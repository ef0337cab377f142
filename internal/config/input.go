// Package config owns a role's settings: it resolves them once from the
// flags' defaults, a strict YAML config file, the environment and the
// command line, checks them, and builds the role's Config from them, for
// start-up, reload and `tunnel check` alike. The edge (cmd/tunnel) hands it
// the flags as plain data (an Input); nothing here knows urfave/cli.
package config

import (
	"fmt"
	"strconv"
	"time"
)

// Kind is how a setting's value is written.
type Kind int

// Kinds of settings.
const (
	String Kind = iota
	List        // repeatable: a YAML list, or several flags
	Bool
	Duration
	Int
	Uint
	Float
)

// Setting is one setting of a role, as the edge defines it.
type Setting struct {
	Key     string   // its dotted key path in the config file: "dial_timeout", "tls.cert"
	Flag    string   // what names a value given on the command line or in the environment: "--dial-timeout"
	Kind    Kind     // how its value is written
	Default []string // its value when nothing sets it, as text; none for no value
	Fields  []string // the library fields it sets ("server.Config.DialTimeout"), by which their errors name it
}

// Input is one role's configuration as the edge captured it, once, at
// start-up: the values given on the command line or in the environment,
// which win over the config file, which wins over the defaults. A reload
// resolves the same Input again, re-reading the file.
type Input struct {
	Role      string              // "server" or "client"
	Settings  []Setting           // every setting of the role
	Given     map[string][]string // values from the command line or environment, by key
	File      string              // the config file, or ""
	FileFlag  string              // what names File in a problem: "--config"
	UserAgent string              // the CRL fetcher's User-Agent
	// SPIFFEEndpointSocket is the SPIFFE_ENDPOINT_SOCKET variable as
	// captured: the Workload API the role uses when neither a socket nor
	// any TLS file is given.
	SPIFFEEndpointSocket string
}

// check parses v as a value of kind k.
func (k Kind) check(v string) error {
	var err error
	switch k {
	case Bool:
		if _, err = strconv.ParseBool(v); err != nil {
			return fmt.Errorf("%q is not true or false", v)
		}
	case Duration:
		if _, err = time.ParseDuration(v); err != nil {
			return fmt.Errorf("%q is not a duration such as 30s or 5m", v)
		}
	case Int:
		if _, err = strconv.ParseInt(v, 0, 64); err != nil {
			return fmt.Errorf("%q is not an integer", v)
		}
	case Uint:
		if _, err = strconv.ParseUint(v, 0, 64); err != nil {
			return fmt.Errorf("%q is not a non-negative integer", v)
		}
	case Float:
		if _, err = strconv.ParseFloat(v, 64); err != nil {
			return fmt.Errorf("%q is not a number", v)
		}
	}
	return nil
}
