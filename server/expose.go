package server

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/wire"
	"github.com/tunnel-dev/tunnel/netfilter"
)

// An expose is the server end of a reverse tunnel: a listener of its own
// (ServeExpose) whose inbound connections, filtered by its own allowlist
// before any byte is read, are carried to a client that publishes the
// expose's name (docs/PROTOCOL.md section 7). Which clients may publish it
// is the expose's publishers rule set.

// Expose configures one expose. It is immutable once a Server holds it.
type Expose struct {
	// Name is the name clients publish: a wire route name.
	Name string

	// Allow are the addresses whose inbound connections the expose's
	// listener takes; required. Any other is reset before a byte is read
	// (conn_rejected, reason ip_not_allowed), as on the main listener.
	Allow *netfilter.Allowlist

	// Publishers are the rules a client's session must pass to publish
	// Name; required, with at least one identity rule: a name reachable
	// from outside is never left to whoever holds a certificate. Its Allow,
	// if set, narrows the publisher's address.
	Publishers *Access

	// MaxConnsPerAddr caps the inbound connections one address holds at
	// once; a connection past it is reset (reason conn_limit). Zero means
	// no cap; negative is an error.
	MaxConnsPerAddr int

	// MaxStreamsPerPublisher caps the inbound connections carried to one
	// publishing session at once; a connection that finds every publisher
	// at its cap is reset (reason publisher_limit). Zero means the server's
	// MaxStreamsPerSession; negative is an error.
	MaxStreamsPerPublisher int
}

// The reasons an expose resets an inbound connection, besides its filter's
// (ip_not_allowed, conn_limit): the conn_rejected lines of the expose and
// the keys of ExposeStats.Rejected.
const (
	// ReasonNoPublisher: no client publishes the name now.
	ReasonNoPublisher = "no_publisher"
	// ReasonPublisherLimit: every publisher carries MaxStreamsPerPublisher
	// connections, or opened streams as fast as StreamRate allows.
	ReasonPublisherLimit = "publisher_limit"
	// ReasonPublisherFailed: every publisher tried refused the connection
	// (its target unreachable, its own limits) or did not answer.
	ReasonPublisherFailed = "publisher_failed"
	// ReasonExposeRemoved: a reload took the expose out of the
	// configuration; its listener stays bound until a restart.
	ReasonExposeRemoved = "expose_removed"
)

// ExposeRejectReasons are the reasons of every conn_rejected line of an
// expose, for metrics that show each one from the start.
var ExposeRejectReasons = []string{
	netfilter.ReasonIPNotAllowed, netfilter.ReasonConnLimit,
	ReasonNoPublisher, ReasonPublisherLimit, ReasonPublisherFailed, ReasonExposeRemoved,
}

// Expose options: ",KEY=VALUE" after LISTEN=NAME.
const (
	exposeAllow      = "allow"
	exposePublisher  = "publisher"
	exposeConnsCap   = "max-conns-per-addr"
	exposeStreamsCap = "max-streams-per-publisher"
)

// ParseExpose parses "LISTEN=NAME[,OPTION]...", the server's --expose,
// where LISTEN is HOST:PORT (an IP literal, "localhost" or empty for every
// address) and each OPTION is one of allow=CIDR (repeatable: the inbound
// allowlist), publisher=RULE (repeatable: an identity rule, as a route's
// allow_identities), max-conns-per-addr=N and max-streams-per-publisher=N.
// It returns the listen address and the Expose; an Expose without an
// allowlist or a publisher rule is an error here, as in New.
func ParseExpose(s string) (listen string, x Expose, err error) {
	fail := func(format string, args ...any) (string, Expose, error) {
		return "", Expose{}, fmt.Errorf("server: expose %q: %s", s, fmt.Sprintf(format, args...))
	}
	listen, rest, ok := strings.Cut(s, "=")
	if !ok {
		return fail("want LISTEN=NAME[,allow=CIDR][,publisher=RULE]...")
	}
	listen = strings.TrimSpace(listen)
	if err := checkExposeListen(listen); err != nil {
		return fail("%v", err)
	}
	name, opts, hasOpts := strings.Cut(rest, ",")
	x.Name = strings.TrimSpace(name)
	var allow []string
	var options []string
	if hasOpts {
		options = strings.Split(opts, ",")
	}
	for _, o := range options {
		o = strings.TrimSpace(o)
		k, v, ok := strings.Cut(o, "=")
		if !ok || strings.TrimSpace(v) == "" {
			return fail("option %q: want KEY=VALUE (%s, %s, %s, %s)", o, exposeAllow, exposePublisher, exposeConnsCap, exposeStreamsCap)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case exposeAllow:
			allow = append(allow, v)
		case exposePublisher:
			r, err := ParseIdentityRule(v)
			if err != nil {
				return fail("%v", err)
			}
			if x.Publishers == nil {
				x.Publishers = &Access{Name: "exposes." + x.Name + ".publishers"}
			}
			x.Publishers.Identities = append(x.Publishers.Identities, r)
		case exposeConnsCap, exposeStreamsCap:
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return fail("%s: %q is not a number of 0 or more", k, v)
			}
			if k == exposeConnsCap {
				x.MaxConnsPerAddr = n
			} else {
				x.MaxStreamsPerPublisher = n
			}
		default:
			return fail("unknown option %q (known: %s, %s, %s, %s)", k, exposeAllow, exposePublisher, exposeConnsCap, exposeStreamsCap)
		}
	}
	if len(allow) > 0 {
		if x.Allow, err = netfilter.ParseAllowlist(allow); err != nil {
			return fail("%v", err)
		}
	}
	if err := x.check(); err != nil {
		return fail("%v", err)
	}
	return listen, x, nil
}

// checkExposeListen checks an expose's LISTEN: HOST:PORT, the host an IP
// literal, "localhost" or empty.
func checkExposeListen(listen string) error {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", listen, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("listen address %q: port %q is not a number from 0 to 65535", listen, port)
	}
	if host != "" && host != "localhost" && net.ParseIP(host) == nil {
		return fmt.Errorf("listen address %q: host must be an IP address, localhost, or empty for every address", listen)
	}
	return nil
}

// check reports what is wrong with x, or nil.
func (x Expose) check() error {
	if err := wire.CheckRouteName(x.Name); err != nil {
		return err
	}
	switch {
	case x.Allow == nil || x.Allow.Len() == 0:
		return fmt.Errorf("expose %q has no allowlist: name the addresses that may connect to it (allow=CIDR; 0.0.0.0/0 and ::/0 allow every address)", x.Name)
	case x.Publishers == nil || len(x.Publishers.Identities) == 0:
		return fmt.Errorf("expose %q has no publisher rule: name the client identities that may publish it (publisher=cn:NAME, dns:..., uri:..., ...)", x.Name)
	case x.MaxConnsPerAddr < 0:
		return fmt.Errorf("expose %q: MaxConnsPerAddr %d is negative", x.Name, x.MaxConnsPerAddr)
	case x.MaxStreamsPerPublisher < 0:
		return fmt.Errorf("expose %q: MaxStreamsPerPublisher %d is negative", x.Name, x.MaxStreamsPerPublisher)
	}
	return nil
}

// checkExposes checks a set of exposes for New and Reload alike: each
// valid, no name twice, none named like a route (a client could not tell a
// publication from an open). Errors are *FieldError.
func checkExposes(xs []Expose, routes map[string]Route) (map[string]Expose, error) {
	m := make(map[string]Expose, len(xs))
	for _, x := range xs {
		if err := x.check(); err != nil {
			return nil, &FieldError{"Exposes", err}
		}
		if _, dup := m[x.Name]; dup {
			return nil, &FieldError{"Exposes", fmt.Errorf("expose %q configured twice", x.Name)}
		}
		if _, clash := routes[x.Name]; clash {
			return nil, &FieldError{"Exposes", fmt.Errorf("expose %q has the name of a route: give one of them another name", x.Name)}
		}
		m[x.Name] = x
	}
	return m, nil
}

// expose is a configured Expose at run time: its filter, whose allowlist
// Reload swaps, and its counters. Its rules are the current policy's.
type expose struct {
	name   string
	filter *netfilter.Filter // the inbound allowlist and per-address cap
	log    *logrus.Entry     // component expose, field expose
	stats  exposeCounters
}

// newExposes builds the run-time exposes of cfg.Exposes, one Filter each.
func newExposes(cfg Config) (map[string]*expose, error) {
	out := make(map[string]*expose, len(cfg.Exposes))
	for _, x := range cfg.Exposes {
		log := cfg.Log.WithFields(logrus.Fields{audit.Component: "expose", audit.Expose: x.Name})
		f, err := netfilter.NewFilter(netfilter.FilterConfig{Allowlist: x.Allow, Log: log, MaxConnsPerAddr: x.MaxConnsPerAddr})
		if err != nil {
			return nil, &FieldError{"Exposes", fmt.Errorf("expose %q: %w", x.Name, err)}
		}
		out[x.Name] = &expose{name: x.Name, filter: f, log: log}
	}
	return out, nil
}

// errUnknownExpose is ServeExpose's error for a name not in Config.Exposes.
var errUnknownExpose = errors.New("server: ServeExpose: no such expose in Config.Exposes")

// Why ExposesDown reports an expose down.
var (
	errNoPublisher   = errors.New("no client publishes it")
	errExposeRemoved = errors.New("removed from the configuration by a reload; its listener resets every connection until a restart")
)
