package netfilter

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/tunnel-dev/tunnel/internal/audit"
)

// fakeClock is an injectable clock that moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newTestFilter returns a filter allowing entries, logging to the returned
// hook, on a fake clock.
func newTestFilter(t *testing.T, interval time.Duration, entries ...string) (*Filter, *test.Hook, *fakeClock) {
	t.Helper()
	logger, hook := test.NewNullLogger()
	f, err := NewFilter(FilterConfig{
		Allowlist:   mustAllowlist(t, entries...),
		LogInterval: interval,
		Log:         logger.WithField(audit.Component, "netfilter"),
	})
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	f.limiter.Now = clock.Now
	return f, hook, clock
}

// fakeConn is a net.Conn that records how it was ended and fails the test
// if anything reads from it.
type fakeConn struct {
	net.Conn // nil: any other method panics
	t        *testing.T
	remote   net.Addr

	mu     sync.Mutex
	linger []int
	closed int
}

func (c *fakeConn) Read([]byte) (int, error) {
	c.t.Error("Read called on a conn being filtered")
	return 0, errors.New("fakeConn: read")
}

func (c *fakeConn) RemoteAddr() net.Addr { return c.remote }

func (c *fakeConn) SetLinger(sec int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.linger = append(c.linger, sec)
	return nil
}

func (c *fakeConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed++
	return nil
}

func (c *fakeConn) ended() (linger []int, closed int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]int(nil), c.linger...), c.closed
}

func newFakeConn(t *testing.T, addr string) *fakeConn {
	return &fakeConn{t: t, remote: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(addr))}
}

// plainConn has Close but no SetLinger; its RemoteAddr is remote (nil:
// none, so lines carry the bare IP).
type plainConn struct {
	net.Conn
	closed bool
	remote net.Addr
}

func (c *plainConn) Close() error { c.closed = true; return nil }

func (c *plainConn) RemoteAddr() net.Addr { return c.remote }

// TestRejectAddrIsHostPort: conn_rejected writes the address as every
// other event does, host:port, IPv6 bracketed and IPv4-mapped unmapped.
func TestRejectAddrIsHostPort(t *testing.T) {
	for _, tc := range []struct {
		ip     string
		remote net.Addr
		want   string
	}{
		{"10.0.0.1", &net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 40001}, "10.0.0.1:40001"},
		{"2001:db8::7", &net.TCPAddr{IP: net.ParseIP("2001:db8::7"), Port: 443}, "[2001:db8::7]:443"},
		{"192.0.2.9", &net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.9"), Port: 5}, "192.0.2.9:5"},
		{"10.0.0.2", nil, "10.0.0.2"},
	} {
		f, hook, _ := newTestFilter(t, 0, "127.0.0.1")
		f.Reject(&plainConn{remote: tc.remote}, netip.MustParseAddr(tc.ip), ReasonIPNotAllowed)
		lines := rejectLines(t, hook)
		if len(lines) != 1 || lines[0].Data[audit.Addr] != tc.want {
			t.Errorf("Reject(%s, remote %v) logged %v, want addr %q", tc.ip, tc.remote, lines, tc.want)
		}
	}
}

func TestNewFilterValidation(t *testing.T) {
	log := logrus.NewEntry(logrus.New())
	good := FilterConfig{Allowlist: mustAllowlist(t, "127.0.0.1"), Log: log}
	tests := []struct {
		name    string
		change  func(*FilterConfig)
		wantErr string
	}{
		{"baseline", func(*FilterConfig) {}, ""},
		{"no allowlist", func(c *FilterConfig) { c.Allowlist = nil }, "netfilter: FilterConfig.Allowlist: required"},
		{"no log", func(c *FilterConfig) { c.Log = nil }, "netfilter: FilterConfig.Log: required"},
		{"negative interval", func(c *FilterConfig) { c.LogInterval = -time.Second }, "netfilter: FilterConfig.LogInterval: -1s is negative"},
		{"negative cap", func(c *FilterConfig) { c.MaxConnsPerAddr = -1 }, "netfilter: FilterConfig.MaxConnsPerAddr: -1 is negative"},
		{"empty allowlist", func(c *FilterConfig) { c.Allowlist = mustAllowlist(t) }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.change(&cfg)
			f, err := NewFilter(cfg)
			if tt.wantErr == "" {
				if err != nil || f == nil {
					t.Fatalf("NewFilter = %v, %v; want a filter", f, err)
				}
				return
			}
			if fe, ok := errors.AsType[*FieldError](err); !ok || err.Error() != tt.wantErr {
				t.Fatalf("NewFilter error = %v (a FieldError: %v), want %q", err, fe != nil, tt.wantErr)
			}
		})
	}
	f, _ := NewFilter(good)
	if f.limiter.Interval != DefaultLogInterval {
		t.Errorf("zero LogInterval became %v, want %v", f.limiter.Interval, DefaultLogInterval)
	}
}

func TestSetAllowlist(t *testing.T) {
	f, _, _ := newTestFilter(t, 0, "127.0.0.1")
	ip := netip.MustParseAddr("10.1.1.1")
	if f.Allowed(ip) {
		t.Fatalf("Allowed(%v) before reload", ip)
	}
	next := mustAllowlist(t, "10.0.0.0/8")
	if err := f.SetAllowlist(next); err != nil {
		t.Fatal(err)
	}
	if !f.Allowed(ip) || f.Allowed(netip.MustParseAddr("127.0.0.1")) || f.Allowlist() != next {
		t.Fatal("SetAllowlist did not replace the allowlist")
	}
	if err := f.SetAllowlist(nil); err == nil {
		t.Fatal("SetAllowlist(nil) = nil, want an error")
	}
	if f.Allowlist() != next {
		t.Fatal("SetAllowlist(nil) changed the allowlist")
	}
}

type stringAddr string

func (a stringAddr) Network() string { return "test" }
func (a stringAddr) String() string  { return string(a) }

func TestPeerAddr(t *testing.T) {
	tests := []struct {
		name string
		in   net.Addr
		want string // "" for false
	}{
		{"tcp v4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 80}, "127.0.0.2"},
		{"tcp v4 4-byte", &net.TCPAddr{IP: net.IP{10, 0, 0, 1}, Port: 80}, "10.0.0.1"},
		{"tcp mapped", &net.TCPAddr{IP: net.ParseIP("::ffff:1.2.3.4"), Port: 80}, "1.2.3.4"},
		{"tcp v6", &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 80}, "2001:db8::1"},
		{"tcp v6 zone", &net.TCPAddr{IP: net.ParseIP("fe80::1"), Zone: "eth0"}, "fe80::1%eth0"},
		{"udp", &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 53}, "192.0.2.1"},
		{"string host:port", stringAddr("[::ffff:127.0.0.1]:443"), "127.0.0.1"},
		{"string v6", stringAddr("[::1]:443"), "::1"},
		{"string garbage", stringAddr("not an address"), ""},
		{"string no port", stringAddr("127.0.0.1"), ""},
		{"unix", &net.UnixAddr{Name: "/tmp/s", Net: "unix"}, ""},
		{"tcp nil IP", &net.TCPAddr{Port: 80}, ""},
		{"nil tcp pointer", (*net.TCPAddr)(nil), ""},
		{"nil udp pointer", (*net.UDPAddr)(nil), ""},
		{"nil", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := PeerAddr(tt.in)
			if tt.want == "" {
				if ok {
					t.Errorf("PeerAddr(%v) = %v, true; want false", tt.in, got)
				}
				return
			}
			if !ok || got.String() != tt.want {
				t.Errorf("PeerAddr(%v) = %v, %v; want %v, true", tt.in, got, ok, tt.want)
			}
		})
	}
}

// rejectLines returns the conn_rejected lines logged so far.
func rejectLines(t *testing.T, hook *test.Hook) []*logrus.Entry {
	t.Helper()
	var out []*logrus.Entry
	for _, e := range hook.AllEntries() {
		if e.Data[audit.Event] == audit.ConnRejected {
			out = append(out, e)
		}
	}
	return out
}

func TestRejectResetsAndCounts(t *testing.T) {
	f, _, _ := newTestFilter(t, 0, "127.0.0.1")
	c := newFakeConn(t, "10.0.0.1:1234")
	f.Reject(c, netip.MustParseAddr("10.0.0.1"), ReasonIPNotAllowed)
	f.Reject(newFakeConn(t, "10.0.0.1:1235"), netip.MustParseAddr("10.0.0.1"), "over_limit")
	f.Reject(newFakeConn(t, "10.0.0.2:1235"), netip.MustParseAddr("10.0.0.2"), "over_limit")
	if linger, closed := c.ended(); len(linger) != 1 || linger[0] != 0 || closed != 1 {
		t.Errorf("conn ended with SetLinger calls %v and %d Close calls; want [0] and 1", linger, closed)
	}
	want := map[string]uint64{ReasonIPNotAllowed: 1, "over_limit": 2}
	got := f.Stats().Rejected
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Stats().Rejected = %v, want %v", got, want)
	}
	got["x"] = 9
	if _, ok := f.Stats().Rejected["x"]; ok {
		t.Error("Stats returned the live map, not a copy")
	}

	pc := &plainConn{}
	f.Reject(pc, netip.MustParseAddr("10.0.0.3"), ReasonIPNotAllowed)
	if !pc.closed {
		t.Error("a conn without SetLinger was not closed")
	}
}

func TestRejectLogRateLimit(t *testing.T) {
	const interval = 10 * time.Second
	f, hook, clock := newTestFilter(t, 0, "127.0.0.1") // 0: the 10s default
	a := netip.MustParseAddr("10.0.0.1")
	b := netip.MustParseAddr("2001:db8::7")
	reject := func(ip netip.Addr) { f.Reject(&plainConn{}, ip, ReasonIPNotAllowed) }

	reject(a)
	lines := rejectLines(t, hook)
	if len(lines) != 1 {
		t.Fatalf("first rejection logged %d lines, want 1", len(lines))
	}
	first := lines[0]
	if first.Data[audit.Reason] != ReasonIPNotAllowed || first.Data[audit.Addr] != "10.0.0.1" || first.Level != logrus.InfoLevel {
		t.Errorf("first line = %v %v, want reason %s addr 10.0.0.1 at info", first.Level, first.Data, ReasonIPNotAllowed)
	}
	if _, ok := first.Data[audit.Count]; ok {
		t.Errorf("a line for one rejection carries count: %v", first.Data)
	}

	for range 5 {
		clock.Advance(interval / 10)
		reject(a)
	}
	reject(b) // another address has its own budget
	if n := len(rejectLines(t, hook)); n != 2 {
		t.Fatalf("after 5 more rejections of a and one of b inside the interval: %d lines, want 2", n)
	}

	clock.Advance(interval / 2) // a's interval is over, b's is not
	reject(a)
	reject(b)
	lines = rejectLines(t, hook)
	if len(lines) != 3 {
		t.Fatalf("after the interval: %d lines, want 3", len(lines))
	}
	last := lines[2]
	if last.Data[audit.Addr] != "10.0.0.1" || last.Data[audit.Count] != uint64(6) {
		t.Errorf("line after the interval = %v, want addr 10.0.0.1 count 6 (5 suppressed + 1)", last.Data)
	}

	clock.Advance(interval)
	reject(b)
	lines = rejectLines(t, hook)
	if last := lines[len(lines)-1]; len(lines) != 4 || last.Data[audit.Addr] != "2001:db8::7" || last.Data[audit.Count] != uint64(2) {
		t.Errorf("b's second line: %d lines, last %v; want 4 lines, count 2", len(lines), last.Data)
	}
	if got := f.Stats().Rejected[ReasonIPNotAllowed]; got != 10 {
		t.Errorf("counted %d rejections, want 10", got)
	}
}

// An address refused for two reasons gets a line for each: a flood of one
// reason does not hide the other.
func TestRejectLogPerReason(t *testing.T) {
	f, hook, clock := newTestFilter(t, 0, "127.0.0.1")
	a := netip.MustParseAddr("10.0.0.1")
	for range 3 {
		f.Reject(&plainConn{}, a, ReasonConnLimit)
		f.Reject(&plainConn{}, a, "first_byte_timeout")
	}
	lines := rejectLines(t, hook)
	if len(lines) != 2 || lines[0].Data[audit.Reason] != ReasonConnLimit || lines[1].Data[audit.Reason] != "first_byte_timeout" {
		t.Fatalf("two reasons from one address logged %d lines (%v), want one per reason", len(lines), lines)
	}
	clock.Advance(DefaultLogInterval)
	f.Reject(&plainConn{}, a, "first_byte_timeout")
	lines = rejectLines(t, hook)
	if last := lines[len(lines)-1]; len(lines) != 3 || last.Data[audit.Reason] != "first_byte_timeout" || last.Data[audit.Count] != uint64(3) {
		t.Errorf("after the interval: %d lines, last %v; want 3, count 3 for first_byte_timeout alone", len(lines), last.Data)
	}
}

func TestRejectLogTableBounded(t *testing.T) {
	const interval = time.Minute
	f, hook, clock := newTestFilter(t, interval, "127.0.0.1")
	f.limiter.Max = 4
	reject := func(i int) {
		f.Reject(&plainConn{}, netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), ReasonIPNotAllowed)
	}
	tableLen := func() int {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.limiter.Len()
	}

	for i := range 1000 { // a flood from many addresses
		reject(i)
		if n := tableLen(); n > 4 {
			t.Fatalf("rate-limit table holds %d addresses, bound is 4", n)
		}
	}
	lines := rejectLines(t, hook)
	if len(lines) != 5 {
		t.Fatalf("flood from 1000 addresses logged %d lines, want 4 + 1 for other addresses", len(lines))
	}
	if other := lines[4]; other.Data[audit.Addr] != OtherAddrs {
		t.Errorf("fifth line = %v, want addr %q", other.Data, OtherAddrs)
	}

	clock.Advance(interval)
	for i := 1000; i < 1010; i++ {
		reject(i)
	}
	lines = rejectLines(t, hook)
	if len(lines) != 10 {
		t.Fatalf("after the interval: %d lines, want 10 (4 fresh addresses + other)", len(lines))
	}
	if other := lines[9]; other.Data[audit.Addr] != OtherAddrs || other.Data[audit.Count] != uint64(996) {
		t.Errorf("other line = %v, want count 996 (995 suppressed + 1)", other.Data)
	}
	for _, l := range lines[5:9] {
		if l.Data[audit.Addr] == OtherAddrs {
			t.Errorf("expired entries were not dropped: %v", l.Data)
		}
	}
}

func TestFilterConcurrent(t *testing.T) {
	f, _, _ := newTestFilter(t, 0, "10.0.0.0/8")
	lists := []*Allowlist{mustAllowlist(t, "10.0.0.0/8"), mustAllowlist(t, "10.0.0.0/8", "192.168.0.0/16")}
	ip := netip.MustParseAddr("10.9.9.9")
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 500 {
				if !f.Allowed(ip) {
					t.Error("10.9.9.9 not allowed while every list allows it")
					return
				}
				_ = f.SetAllowlist(lists[i%2])
				f.Reject(&plainConn{}, netip.AddrFrom4([4]byte{192, 0, byte(g), byte(i)}), ReasonIPNotAllowed)
				_ = f.Stats()
			}
		})
	}
	wg.Wait()
	if got := f.Stats().Rejected[ReasonIPNotAllowed]; got != 2000 {
		t.Errorf("counted %d rejections, want 2000", got)
	}
}

// TestHoldCapsConnsPerAddr: an address holds at most MaxConnsPerAddr
// connections through the listener; closing one frees its slot; other
// addresses are not affected.
func TestHoldCapsConnsPerAddr(t *testing.T) {
	al, err := ParseAllowlist([]string{"127.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := NewFilter(FilterConfig{Allowlist: al, Log: logrus.NewEntry(logrus.New()), MaxConnsPerAddr: 2})
	if err != nil {
		t.Fatal(err)
	}
	a, b := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
	pipe := func() net.Conn { c1, c2 := net.Pipe(); t.Cleanup(func() { c1.Close(); c2.Close() }); return c1 }
	h1, ok1 := f.Hold(pipe(), a)
	_, ok2 := f.Hold(pipe(), a)
	if !ok1 || !ok2 {
		t.Fatal("the first two conns of an address were refused")
	}
	if _, ok := f.Hold(pipe(), a); ok {
		t.Fatal("a third conn of the same address was admitted")
	}
	if _, ok := f.Hold(pipe(), b); !ok {
		t.Fatal("another address was refused")
	}
	h1.Close()
	h1.Close() // a second Close must not free a second slot
	if _, ok := f.Hold(pipe(), a); !ok {
		t.Fatal("a closed conn did not give its slot back")
	}
	if _, ok := f.Hold(pipe(), a); ok {
		t.Fatal("closing one conn twice freed two slots")
	}
	if st := f.Stats(); st.Addrs != 2 {
		t.Errorf("Stats().Addrs = %d, want 2", st.Addrs)
	}
}
