package netfilter

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/logthrottle"
)

// ReasonIPNotAllowed is the rejection reason for a peer whose address is not
// on the allowlist (or could not be determined).
const ReasonIPNotAllowed = "ip_not_allowed"

// DefaultLogInterval is the interval between rejection log lines of one
// address and reason when FilterConfig.LogInterval is zero.
const DefaultLogInterval = 10 * time.Second

// maxLogAddrs bounds the rate-limit table of a Filter (addresses times
// reasons).
const maxLogAddrs = 4096

// rejectKey is what conn_rejected lines are throttled by: an address that
// is refused for two reasons gets a line for each, so neither hides the
// other.
type rejectKey struct {
	ip     netip.Addr
	reason string
}

// OtherAddrs is the addr field of the rejection line that stands for
// addresses folded together because the per-address table was full.
const OtherAddrs = "other"

// FilterConfig configures a Filter. Allowlist and Log are required.
type FilterConfig struct {
	// Allowlist is the initial allowlist; required. SetAllowlist replaces it.
	Allowlist *Allowlist
	// LogInterval is the least time between two rejection lines for one
	// address and reason. Zero means DefaultLogInterval (10s); negative is an error.
	LogInterval time.Duration
	// Log receives conn_rejected events; required. It should already carry
	// the component field.
	Log *logrus.Entry
	// MaxConnsPerAddr caps the connections one client address holds at
	// once (see Hold); 0 means no cap.
	MaxConnsPerAddr int
}

// Filter decides whether a peer address may connect, and rejects those that
// may not: with a reset (SO_LINGER 0), counted by reason, and logged at most
// once per address and reason per LogInterval. All methods are safe for concurrent use.
// Build one with NewFilter; the zero value is not usable.
type Filter struct {
	allow   atomic.Pointer[Allowlist] // swapped whole by SetAllowlist
	log     *logrus.Entry
	limiter *logthrottle.Throttle[rejectKey] // one line per address and reason per interval

	maxConns int // per address; 0: no cap

	mu       sync.Mutex
	rejected map[string]uint64  // by reason; guarded by mu
	conns    map[netip.Addr]int // open connections by address; guarded by mu
}

// FilterStats are a Filter's counters since it was built.
type FilterStats struct {
	// Rejected counts rejected connections by reason. The map is a copy.
	Rejected map[string]uint64
	// Addrs is how many client addresses hold connections now (with a
	// per-address cap; 0 without).
	Addrs int
}

// FieldError reports a bad value of a FilterConfig field: the field, as
// named in FilterConfig ("MaxConnsPerAddr"), and what is wrong with it.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string {
	return "netfilter: FilterConfig." + e.Field + ": " + e.Err.Error()
}
func (e *FieldError) Unwrap() error { return e.Err }

// NewFilter validates cfg and returns a Filter. It starts no goroutines.
// Errors are *FieldError.
func NewFilter(cfg FilterConfig) (*Filter, error) {
	switch {
	case cfg.Allowlist == nil:
		return nil, &FieldError{"Allowlist", errors.New("required")}
	case cfg.Log == nil:
		return nil, &FieldError{"Log", errors.New("required")}
	case cfg.LogInterval < 0:
		return nil, &FieldError{"LogInterval", fmt.Errorf("%v is negative", cfg.LogInterval)}
	case cfg.MaxConnsPerAddr < 0:
		return nil, &FieldError{"MaxConnsPerAddr", fmt.Errorf("%d is negative", cfg.MaxConnsPerAddr)}
	}
	interval := cfg.LogInterval
	if interval == 0 {
		interval = DefaultLogInterval
	}
	f := &Filter{
		log:      cfg.Log,
		limiter:  &logthrottle.Throttle[rejectKey]{Interval: interval, Max: maxLogAddrs},
		maxConns: cfg.MaxConnsPerAddr,
		rejected: make(map[string]uint64),
		conns:    make(map[netip.Addr]int),
	}
	f.allow.Store(cfg.Allowlist)
	return f, nil
}

// Allowlist returns the allowlist in force.
func (f *Filter) Allowlist() *Allowlist { return f.allow.Load() }

// SetAllowlist replaces the allowlist atomically: every decision after it
// returns uses a. Connections already accepted are not re-checked. A nil a
// is refused with an error and the old list stays.
func (f *Filter) SetAllowlist(a *Allowlist) error {
	if a == nil {
		return errors.New("netfilter: SetAllowlist: nil allowlist")
	}
	f.allow.Store(a)
	return nil
}

// Allowed reports whether ip is on the allowlist in force. It does no I/O.
func (f *Filter) Allowed(ip netip.Addr) bool { return f.allow.Load().Contains(ip) }

// Reject closes c with a reset, without reading from it: it sets SO_LINGER
// to 0 when c is a *net.TCPConn or otherwise has SetLinger(int) error, then
// closes c (a conn without SetLinger gets a plain Close). It counts the
// rejection under reason and logs the event conn_rejected with the fields
// reason and addr (ip and the port of c's remote address, host:port as in
// every other event), at most once per address and reason per
// LogInterval. A line that stands for several rejections (the ones
// suppressed since the last line, plus its own) carries the field count.
// Rejections suppressed after the last line of their address and reason are
// counted in Stats but never logged. Reject may be called for a connection
// that another goroutine is reading; that read then fails.
//
// The table of addresses and reasons is bounded: when it is full, expired
// entries are dropped, and if it is still full the new entry is folded with
// all other such entries into one line per interval whose addr is
// OtherAddrs.
func (f *Filter) Reject(c net.Conn, ip netip.Addr, reason string) {
	addr := addrPort(ip, c.RemoteAddr())
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		_ = l.SetLinger(0) // best effort: a failure still ends in Close
	}
	_ = c.Close() // the peer is refused; a close error changes nothing

	f.mu.Lock()
	f.rejected[reason]++
	f.mu.Unlock()
	count, folded, ok := f.limiter.Hit(rejectKey{ip, reason})
	if !ok {
		return
	}
	key := addr
	if folded {
		key = OtherAddrs
	}
	fields := logrus.Fields{
		audit.Event:  audit.ConnRejected,
		audit.Reason: reason,
		audit.Addr:   key,
	}
	if count > 1 {
		fields[audit.Count] = count
	}
	f.log.WithFields(fields).Info("connection rejected")
}

// Stats returns a copy of the counters.
func (f *Filter) Stats() FilterStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return FilterStats{Rejected: maps.Clone(f.rejected), Addrs: len(f.conns)}
}

// PeerAddr returns the IP of a (a *net.TCPAddr, a *net.UDPAddr, or any
// net.Addr whose String() is host:port as netip.ParseAddrPort reads it),
// unmapped, with any zone kept. It reports false when there is no IP.
func PeerAddr(a net.Addr) (netip.Addr, bool) {
	var ip netip.Addr
	switch a := a.(type) {
	case nil:
		return netip.Addr{}, false
	case *net.TCPAddr:
		if a == nil {
			return netip.Addr{}, false
		}
		ip = a.AddrPort().Addr()
	case *net.UDPAddr:
		if a == nil {
			return netip.Addr{}, false
		}
		ip = a.AddrPort().Addr()
	default:
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return netip.Addr{}, false
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap()
	return ip, ip.IsValid()
}

func ipString(ip netip.Addr) string {
	if !ip.IsValid() {
		return "unknown"
	}
	return ip.String()
}

// addrPort writes ip with the port of a (a connection's remote address)
// as host:port, the way every event writes an address: IPv6 in brackets,
// IPv4-mapped addresses unmapped (ip is, from PeerAddr). Without a port it
// is the address alone, and without an IP "unknown".
func addrPort(ip netip.Addr, a net.Addr) string {
	if !ip.IsValid() {
		return ipString(ip)
	}
	var port uint16
	switch a := a.(type) {
	case *net.TCPAddr:
		if a != nil {
			port = uint16(a.Port)
		}
	case nil:
	default:
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			port = ap.Port()
		}
	}
	if port == 0 {
		return ip.String()
	}
	return netip.AddrPortFrom(ip, port).String()
}
