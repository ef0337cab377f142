package netfilter

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParseEntry(t *testing.T) {
	tests := []struct {
		in   string
		want string // the prefix, or "" for an error
	}{
		{"10.0.0.0/8", "10.0.0.0/8"},
		{" \t10.0.0.0/8 \n", "10.0.0.0/8"},
		{"1.2.3.4", "1.2.3.4/32"},
		{"1.2.3.4/32", "1.2.3.4/32"},
		{"0.0.0.0/0", "0.0.0.0/0"},
		{"2001:db8::/32", "2001:db8::/32"},
		{"::1", "::1/128"},
		{"::/0", "::/0"},
		{"::ffff:10.0.0.0/104", "10.0.0.0/8"},
		{"::ffff:0.0.0.0/96", "0.0.0.0/0"},
		{"::ffff:127.0.0.1", "127.0.0.1/32"},
		{"::ffff:7f00:1/128", "127.0.0.1/32"},
		{"", ""},
		{"   ", ""},
		{"10.0.0.300/8", ""},
		{"10.0.0.0/33", ""},
		{"::/129", ""},
		{"10.0.0.0/", ""},
		{"10.0.0.0/-1", ""},
		{"10.0.0.1/8", ""},
		{"::ffff:10.0.0.1/104", ""},
		{"fe80::1%eth0", ""},
		{"fe80::/64%eth0", ""},
		{"example.com", ""},
		{"10.0.0.0/8,10.1.0.0/16", ""},
		{"10.0.0.0 /8", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseEntry(tt.in)
			if tt.want == "" {
				var ee *EntryError
				if !errors.As(err, &ee) {
					t.Fatalf("ParseEntry(%q) = %v, %v; want *EntryError", tt.in, got, err)
				}
				if want := strings.TrimSpace(tt.in); ee.Entry != want {
					t.Errorf("EntryError.Entry = %q, want %q", ee.Entry, want)
				}
				if prefix := fmt.Sprintf("netfilter: allow entry %q: ", ee.Entry); !strings.HasPrefix(err.Error(), prefix) {
					t.Errorf("error %q does not start with %q", err, prefix)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseEntry(%q) error: %v", tt.in, err)
			}
			if got.String() != tt.want {
				t.Errorf("ParseEntry(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseEntryErrorCauses(t *testing.T) {
	tests := []struct {
		in         string
		wantMasked string // for HostBitsError
		wantIs     error
	}{
		{in: "10.0.0.1/8", wantMasked: "10.0.0.0/8"},
		{in: "2001:db8::1/32", wantMasked: "2001:db8::/32"},
		{in: "::ffff:10.0.0.1/104", wantMasked: "::ffff:10.0.0.0/104"},
		{in: "fe80::1%eth0", wantIs: ErrZone},
		{in: "", wantIs: ErrEmptyEntry},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := ParseEntry(tt.in)
			if tt.wantIs != nil {
				if !errors.Is(err, tt.wantIs) {
					t.Fatalf("ParseEntry(%q) = %v, want errors.Is %v", tt.in, err, tt.wantIs)
				}
				return
			}
			hb, ok := errors.AsType[*HostBitsError](err)
			if !ok {
				t.Fatalf("ParseEntry(%q) = %v, want *HostBitsError", tt.in, err)
			}
			if hb.Masked.String() != tt.wantMasked {
				t.Errorf("Masked = %v, want %v", hb.Masked, tt.wantMasked)
			}
			if !strings.Contains(err.Error(), tt.wantMasked) {
				t.Errorf("error %q does not suggest %q", err, tt.wantMasked)
			}
		})
	}
}

func TestParseAllowlist(t *testing.T) {
	t.Run("first bad entry is named", func(t *testing.T) {
		_, err := ParseAllowlist([]string{"10.0.0.0/8", "10.0.0.300/8", "nope"})
		const want = `netfilter: allow entry "10.0.0.300/8": `
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Fatalf("ParseAllowlist error = %v, want prefix %q", err, want)
		}
	})
	t.Run("empty list is valid and contains nothing", func(t *testing.T) {
		a, err := ParseAllowlist(nil)
		if err != nil {
			t.Fatal(err)
		}
		if a.Len() != 0 || a.String() != "" || a.Contains(netip.MustParseAddr("127.0.0.1")) {
			t.Errorf("empty allowlist: Len %d, String %q, contains 127.0.0.1", a.Len(), a.String())
		}
	})
	t.Run("dedup, sort, normalise, copy", func(t *testing.T) {
		a, err := ParseAllowlist([]string{"2001:db8::/32", "10.0.0.0/8", " 10.0.0.0/8", "::ffff:10.0.0.0/104", "1.2.3.4", "10.1.0.0/16"})
		if err != nil {
			t.Fatal(err)
		}
		const want = "1.2.3.4/32,10.0.0.0/8,10.1.0.0/16,2001:db8::/32"
		if got := a.String(); got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
		if a.Len() != 4 {
			t.Errorf("Len() = %d, want 4", a.Len())
		}
		ps := a.Prefixes()
		ps[0] = netip.MustParsePrefix("0.0.0.0/0")
		if a.Contains(netip.MustParseAddr("9.9.9.9")) || a.Prefixes()[0].String() != "1.2.3.4/32" {
			t.Error("changing the slice from Prefixes changed the Allowlist")
		}
		b, err := ParseAllowlist(strings.Split(a.String(), ","))
		if err != nil || !slices.Equal(b.Prefixes(), a.Prefixes()) {
			t.Errorf("round trip of %q = %v, %v", a.String(), b, err)
		}
	})
	t.Run("nil allowlist", func(t *testing.T) {
		var a *Allowlist
		if a.Contains(netip.MustParseAddr("1.1.1.1")) || a.Len() != 0 || a.String() != "" || a.Prefixes() != nil {
			t.Error("a nil *Allowlist is not empty")
		}
	})
}

func mustAllowlist(tb testing.TB, entries ...string) *Allowlist {
	tb.Helper()
	a, err := ParseAllowlist(entries)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

func TestContains(t *testing.T) {
	tests := []struct {
		name  string
		allow []string
		ip    string // "" is the zero netip.Addr
		want  bool
	}{
		{"v4 inside", []string{"10.0.0.0/8"}, "10.1.2.3", true},
		{"v4 first", []string{"10.0.0.0/8"}, "10.0.0.0", true},
		{"v4 last", []string{"10.0.0.0/8"}, "10.255.255.255", true},
		{"v4 one before", []string{"10.0.0.0/8"}, "9.255.255.255", false},
		{"v4 one after", []string{"10.0.0.0/8"}, "11.0.0.0", false},
		{"v4 host", []string{"127.0.0.1"}, "127.0.0.1", true},
		{"v4 host neighbour", []string{"127.0.0.1"}, "127.0.0.2", false},
		{"v4 top address", []string{"255.255.255.255/32"}, "255.255.255.255", true},
		{"v4 below top", []string{"255.255.255.255/32"}, "255.255.255.254", false},
		{"v4 bottom address", []string{"0.0.0.0/32"}, "0.0.0.0", true},
		{"v4 all", []string{"0.0.0.0/0"}, "203.0.113.9", true},
		{"v4 all not v6", []string{"0.0.0.0/0"}, "::1", false},
		{"v6 all", []string{"::/0"}, "2001:db8::1", true},
		{"v6 all not v4", []string{"::/0"}, "1.2.3.4", false},
		{"v6 all not mapped v4", []string{"::/0"}, "::ffff:1.2.3.4", false},
		{"v6 inside", []string{"2001:db8::/32"}, "2001:db8:1::1", true},
		{"v6 first", []string{"2001:db8::/32"}, "2001:db8::", true},
		{"v6 last", []string{"2001:db8::/32"}, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", true},
		{"v6 one before", []string{"2001:db8::/32"}, "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", false},
		{"v6 one after", []string{"2001:db8::/32"}, "2001:db9::", false},
		{"v6 /64 last", []string{"2001:db8:0:1::/64"}, "2001:db8:0:1:ffff:ffff:ffff:ffff", true},
		{"v6 /64 after", []string{"2001:db8:0:1::/64"}, "2001:db8:0:2::", false},
		{"v6 /96 last", []string{"2001:db8::/96"}, "2001:db8::ffff:ffff", true},
		{"v6 /96 after", []string{"2001:db8::/96"}, "2001:db8::1:0:0", false},
		{"v6 top", []string{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"}, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true},
		{"v6 zone ignored", []string{"fe80::/10"}, "fe80::1%eth0", true},
		{"v6 loopback", []string{"::1"}, "::1", true},
		{"mapped peer, v4 rule", []string{"127.0.0.1/32"}, "::ffff:127.0.0.1", true},
		{"mapped peer, other v4", []string{"127.0.0.1/32"}, "::ffff:127.0.0.2", false},
		{"mapped rule, v4 peer", []string{"::ffff:127.0.0.0/104"}, "127.9.9.9", true},
		{"overlap inner", []string{"10.0.0.0/8", "10.1.0.0/16"}, "10.1.255.255", true},
		{"overlap outer", []string{"10.1.0.0/16", "10.0.0.0/8"}, "10.200.0.0", true},
		{"overlap after", []string{"10.0.0.0/8", "10.1.0.0/16"}, "11.0.0.0", false},
		{"adjacent low", []string{"192.168.0.0/24", "192.168.1.0/24"}, "192.168.0.0", true},
		{"adjacent seam", []string{"192.168.0.0/24", "192.168.1.0/24"}, "192.168.1.0", true},
		{"adjacent high", []string{"192.168.0.0/24", "192.168.1.0/24"}, "192.168.1.255", true},
		{"adjacent after", []string{"192.168.0.0/24", "192.168.1.0/24"}, "192.168.2.0", false},
		{"adjacent before", []string{"192.168.0.0/24", "192.168.1.0/24"}, "192.167.255.255", false},
		{"v6 adjacent over 64-bit carry", []string{"::ffff:ffff:ffff:ffff/128", "0:0:0:1::/128"}, "0:0:0:1::", true},
		{"v6 after carry", []string{"::ffff:ffff:ffff:ffff/128", "0:0:0:1::/128"}, "0:0:0:1::1", false},
		{"gap of one address", []string{"10.0.0.0/32", "10.0.0.2/32"}, "10.0.0.1", false},
		{"gap between", []string{"10.0.0.0/24", "10.0.2.0/24"}, "10.0.1.7", false},
		{"mixed families", []string{"10.0.0.0/8", "2001:db8::/32"}, "2001:db8::5", true},
		{"invalid addr", []string{"0.0.0.0/0", "::/0"}, "", false},
		{"empty list", nil, "127.0.0.1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := mustAllowlist(t, tt.allow...)
			var ip netip.Addr
			if tt.ip != "" {
				ip = netip.MustParseAddr(tt.ip)
			}
			if got := a.Contains(ip); got != tt.want {
				t.Errorf("%v.Contains(%v) = %v, want %v", tt.allow, tt.ip, got, tt.want)
			}
		})
	}
}

// linearContains is the obvious definition Contains must agree with.
func linearContains(ps []netip.Prefix, ip netip.Addr) bool {
	ip = ip.WithZone("").Unmap()
	for _, p := range ps {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// randPrefix returns a random masked prefix. Addresses come from a few base
// values and lengths cluster, so the prefixes overlap and touch often.
func randPrefix(r *rand.Rand) netip.Prefix {
	if r.IntN(3) == 0 { // small prefixes in a tiny pool: exact gaps of one address
		var p netip.Prefix
		if r.IntN(2) == 0 {
			p, _ = netip.AddrFrom4([4]byte{10, 0, 0, byte(r.IntN(16))}).Prefix(28 + r.IntN(5))
		} else {
			seam := netip.MustParseAddr("::ffff:ffff:ffff:fff0") // the low 64 bits about to carry
			p, _ = netip.AddrFrom16(addOffset(seam.As16(), r.IntN(32))).Prefix(124 + r.IntN(5))
		}
		return p
	}
	var a netip.Addr
	if r.IntN(2) == 0 {
		b := [4]byte{byte(r.IntN(4)) + 10, byte(r.IntN(4)), byte(r.UintN(256)), byte(r.UintN(256))}
		a = netip.AddrFrom4(b)
	} else {
		var b [16]byte
		b[0], b[1] = 0x20, 0x01
		b[2] = byte(r.IntN(3))
		for i := 3; i < 16; i++ {
			b[i] = byte(r.UintN(256))
		}
		if r.IntN(4) == 0 { // values near the 64-bit seam
			for i := 8; i < 16; i++ {
				b[i] = 0xff
			}
		}
		a = netip.AddrFrom16(b)
	}
	bits := a.BitLen() - r.IntN(a.BitLen()/2+1)
	if r.IntN(10) == 0 {
		bits = r.IntN(a.BitLen() + 1)
	}
	p, _ := a.Prefix(bits)
	return p
}

// probes returns addresses worth testing against ps: each prefix's first and
// last address and their neighbours, plus random ones and mapped forms.
func probes(r *rand.Rand, ps []netip.Prefix) []netip.Addr {
	var out []netip.Addr
	for _, p := range ps {
		first := p.Addr()
		last := lastAddr(p)
		out = append(out, first, last, first.Prev(), last.Next())
	}
	for range 200 {
		out = append(out, randPrefix(r).Addr(), netip.AddrFrom16(randPrefix(r).Addr().As16()))
	}
	return slices.DeleteFunc(out, func(a netip.Addr) bool { return !a.IsValid() })
}

// addOffset adds n to the 128-bit address b.
func addOffset(b [16]byte, n int) [16]byte {
	a := netip.AddrFrom16(b)
	for range n {
		a = a.Next()
	}
	return a.As16()
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func TestContainsMatchesLinearScan(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		ps := make([]netip.Prefix, r.IntN(40))
		entries := make([]string, len(ps))
		for i := range ps {
			ps[i] = randPrefix(r)
			entries[i] = ps[i].String()
		}
		a := mustAllowlist(t, entries...)
		for _, ip := range probes(r, ps) {
			if got, want := a.Contains(ip), linearContains(ps, ip); got != want {
				t.Fatalf("round %d: %v.Contains(%v) = %v, linear scan says %v", round, a, ip, got, want)
			}
		}
	}
}

func BenchmarkAllowlistContains(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 4))
	entries := make([]string, 10_000)
	for i := range entries {
		var p netip.Prefix
		if i%2 == 0 {
			p, _ = netip.AddrFrom4([4]byte{byte(r.UintN(256)), byte(r.UintN(256)), byte(r.UintN(256)), byte(r.UintN(256))}).Prefix(16 + r.IntN(17))
		} else {
			var a [16]byte
			for j := range a {
				a[j] = byte(r.UintN(256))
			}
			p, _ = netip.AddrFrom16(a).Prefix(32 + r.IntN(97))
		}
		entries[i] = p.String()
	}
	a := mustAllowlist(b, entries...)
	ips := make([]netip.Addr, 1024)
	for i := range ips {
		if i%2 == 0 {
			ips[i] = netip.AddrFrom4([4]byte{byte(r.UintN(256)), byte(r.UintN(256)), byte(r.UintN(256)), byte(r.UintN(256))})
		} else {
			ips[i] = a.Prefixes()[r.IntN(a.Len())].Addr()
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		a.Contains(ips[i%len(ips)])
	}
}

func FuzzParseEntry(f *testing.F) {
	for _, s := range []string{
		"10.0.0.0/8", "1.2.3.4", "::1", "2001:db8::/32", "::ffff:10.0.0.0/104", "0.0.0.0/0", "::/0",
		"10.0.0.1/8", "fe80::1%eth0", "10.0.0.300/8", " 10.0.0.0/8 ", "", "::ffff:1.2.3.4/128",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseEntry(s)
		if err != nil {
			if _, ok := errors.AsType[*EntryError](err); !ok {
				t.Fatalf("ParseEntry(%q) error %v is not an *EntryError", s, err)
			}
			return
		}
		if !p.IsValid() || p.Masked() != p || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			t.Fatalf("ParseEntry(%q) = %v: not a valid, masked, unmapped, zoneless prefix", s, p)
		}
		q, err := ParseEntry(p.String())
		if err != nil || q != p {
			t.Fatalf("ParseEntry(%q) = %v; reparsed: %v, %v", s, p, q, err)
		}
		a := mustAllowlist(t, s)
		for _, end := range []netip.Addr{p.Addr(), lastAddr(p)} {
			// An IPv6 rule never matches an IPv4-mapped peer (::/80 ends in one).
			if got, want := a.Contains(end), !end.Is4In6(); got != want {
				t.Fatalf("allowlist %v: Contains(%v) = %v, want %v", a, end, got, want)
			}
		}
	})
}

func FuzzParseAllowlist(f *testing.F) {
	f.Add("10.0.0.0/8,10.1.0.0/16,192.168.0.0/24,192.168.1.0/24", "10.1.2.3")
	f.Add("::/0,0.0.0.0/0", "::ffff:1.2.3.4")
	f.Add("2001:db8::/32,::1", "2001:db8::1")
	f.Fuzz(func(t *testing.T, list, ip string) {
		a, err := ParseAllowlist(strings.Split(list, ","))
		if err != nil {
			return
		}
		b, err := ParseAllowlist(strings.Split(a.String(), ","))
		if a.Len() > 0 && (err != nil || !slices.Equal(a.Prefixes(), b.Prefixes())) {
			t.Fatalf("round trip of %q: %v, %v", a.String(), b, err)
		}
		addr, err := netip.ParseAddr(ip)
		if err != nil {
			return
		}
		if got, want := a.Contains(addr), linearContains(a.Prefixes(), addr); got != want {
			t.Fatalf("%v.Contains(%v) = %v, linear scan says %v", a, addr, got, want)
		}
	})
}

// TestAllowlistCoversAll: coverage of a whole family is computed from the
// union of the prefixes, not read off a /0.
func TestAllowlistCoversAll(t *testing.T) {
	for _, tt := range []struct {
		entries []string
		v4, v6  bool
	}{
		{[]string{"0.0.0.0/0"}, true, false},
		{[]string{"0.0.0.0/1", "128.0.0.0/1"}, true, false},
		{[]string{"::ffff:0.0.0.0/96"}, true, false},
		{[]string{"0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/1", "10.0.0.0/8"}, true, false},
		{[]string{"0.0.0.0/1", "128.0.0.0/2", "192.0.0.0/3", "224.0.0.0/3"}, true, false},
		{[]string{"0.0.0.0/1", "128.0.0.0/2", "192.0.0.0/3"}, false, false},
		{[]string{"0.0.0.0/1", "128.0.0.1/32"}, false, false},
		{[]string{"::/0"}, false, true},
		{[]string{"::/1", "8000::/1"}, false, true},
		{[]string{"::/1", "8000::/2", "c000::/2"}, false, true},
		{[]string{"::/1", "8000::/2"}, false, false},
		{[]string{"::/1", "8000::/1", "0.0.0.0/1", "128.0.0.0/1"}, true, true},
		{[]string{"10.0.0.0/8", "2001:db8::/32"}, false, false},
		{nil, false, false},
	} {
		al, err := ParseAllowlist(tt.entries)
		if err != nil {
			t.Fatal(err)
		}
		if v4, v6 := al.CoversAllIPv4(), al.CoversAllIPv6(); v4 != tt.v4 || v6 != tt.v6 {
			t.Errorf("%v: CoversAllIPv4 %v, CoversAllIPv6 %v; want %v, %v", tt.entries, v4, v6, tt.v4, tt.v6)
		}
	}
	var nilList *Allowlist
	if nilList.CoversAllIPv4() || nilList.CoversAllIPv6() {
		t.Error("a nil list covers a family")
	}
}
