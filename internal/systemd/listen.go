package systemd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/activation"
)

// Prefix starts a listening address that names a socket passed by systemd
// ("systemd:NAME", NAME being the socket's FileDescriptorName=), as
// ghostunnel's systemd: addresses do.
const Prefix = "systemd:"

// SocketName returns NAME of an address "systemd:NAME" and true, or false
// when addr names no inherited socket.
func SocketName(addr string) (string, bool) {
	return strings.CutPrefix(addr, Prefix)
}

// CheckName checks the NAME of a "systemd:NAME" address as systemd checks a
// FileDescriptorName=: at most 255 printable ASCII characters, no colon.
// An empty name stands for the only socket passed.
func CheckName(name string) error {
	if len(name) > 255 {
		return fmt.Errorf("systemd: socket name is %d bytes long; systemd allows 255", len(name))
	}
	for _, r := range name {
		if r <= ' ' || r > '~' || r == ':' {
			return fmt.Errorf("systemd: socket name %q: only printable ASCII without spaces or colons (as FileDescriptorName= takes)", name)
		}
	}
	return nil
}

// passed are the sockets systemd passed, read once from LISTEN_PID,
// LISTEN_FDS and LISTEN_FDNAMES (which are then unset, so nothing this
// process starts inherits them).
var passed struct {
	once  sync.Once
	files []*os.File // by position; an entry is nil once taken
	named bool       // LISTEN_FDNAMES was set
	env   string     // what was found, for errors: "LISTEN_FDS=2 LISTEN_FDNAMES=a:b"
	mu    sync.Mutex // guards files after once
}

func loadPassed() {
	passed.once.Do(func() {
		names, named := os.LookupEnv("LISTEN_FDNAMES")
		passed.named = named && names != ""
		passed.env = fmt.Sprintf("LISTEN_PID=%q LISTEN_FDS=%q LISTEN_FDNAMES=%q (this process is %d)",
			os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS"), names, os.Getpid())
		passed.files = activation.Files(true)
	})
}

// errUnsupported is Listener's error on platforms without socket passing.
var errUnsupported = errors.New("systemd: socket activation needs a systemd (Linux) host; this is " + runtime.GOOS)

// Listener returns the TCP listening socket systemd passed under name (its
// FileDescriptorName=). Each socket can be taken once; the caller owns and
// closes it. With no LISTEN_FDNAMES (systemd-socket-activate without
// --fdname) a single passed socket is taken whatever name asks for it; an
// empty name takes the only socket passed. The error says what was passed
// when nothing matches.
func Listener(name string) (net.Listener, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	if !supported {
		return nil, errUnsupported
	}
	loadPassed()
	passed.mu.Lock()
	defer passed.mu.Unlock()
	if len(passed.files) == 0 {
		return nil, fmt.Errorf("systemd: no socket named %q was passed: no sockets were passed at all (%s); start from a .socket unit, or systemd-socket-activate --fdname=%s", name, passed.env, name)
	}
	names := make([]string, len(passed.files))
	for i, f := range passed.files {
		if f != nil {
			names[i] = f.Name()
		}
	}
	i, err := pick(names, passed.named, name, passed.env)
	if err != nil {
		return nil, err
	}
	f := passed.files[i]
	fd := f.Fd()
	ln, err := net.FileListener(f)
	f.Close() // FileListener made its own descriptor
	passed.files[i] = nil
	if err != nil {
		return nil, fmt.Errorf("systemd: socket %q (fd %d) is not a listening socket: %w", name, fd, err)
	}
	if ln.Addr().Network() != "tcp" {
		ln.Close()
		return nil, fmt.Errorf("systemd: socket %q is a %s socket; tunnel takes TCP listening sockets (ListenStream=HOST:PORT)", name, ln.Addr().Network())
	}
	return ln, nil
}

// pick returns the index in names (the passed sockets' names by position,
// "" once taken) of the socket name asks for: by name when the names were
// passed (named), else the only socket passed; env describes what was
// passed, for errors.
func pick(names []string, named bool, name, env string) (int, error) {
	var avail []int
	for i, n := range names {
		if n != "" {
			avail = append(avail, i)
		}
	}
	if len(avail) == 0 {
		return 0, fmt.Errorf("systemd: socket %q: every passed socket is already in use", name)
	}
	if !named || name == "" {
		switch {
		case len(names) == 1:
			return avail[0], nil
		case !named:
			return 0, fmt.Errorf("systemd: socket %q: %d sockets were passed without names (%s); name them with FileDescriptorName= (or --fdname)", name, len(names), env)
		}
		return 0, fmt.Errorf("systemd: an empty socket name takes the only socket passed, and %d were passed (%s)", len(names), env)
	}
	for _, i := range avail {
		if names[i] == name {
			return i, nil
		}
	}
	var left []string
	for _, i := range avail {
		if !slices.Contains(left, names[i]) {
			left = append(left, names[i])
		}
	}
	return 0, fmt.Errorf("systemd: no socket named %q was passed; the names passed and not taken are %s (%s)", name, strings.Join(left, ", "), env)
}

// Names returns the names of the passed sockets not taken yet, in order.
func Names() []string {
	if !supported {
		return nil
	}
	loadPassed()
	passed.mu.Lock()
	defer passed.mu.Unlock()
	var out []string
	for _, f := range passed.files {
		if f != nil && !slices.Contains(out, f.Name()) {
			out = append(out, f.Name())
		}
	}
	return out
}
