package netfilter

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// bigAllowlist returns an allowlist of n random IPv4 /24s and n/4 IPv6 /48s,
// and addresses to look up, half of them inside.
func bigAllowlist(b *testing.B, n int) (*Allowlist, []netip.Addr) {
	b.Helper()
	r := rand.New(rand.NewPCG(1, 2))
	entries := make([]string, 0, n+n/4)
	var inside []netip.Addr
	for range n {
		a := [4]byte{byte(r.IntN(223) + 1), byte(r.IntN(256)), byte(r.IntN(256)), 0}
		entries = append(entries, fmt.Sprintf("%d.%d.%d.0/24", a[0], a[1], a[2]))
		a[3] = byte(r.IntN(256))
		inside = append(inside, netip.AddrFrom4(a))
	}
	for range n / 4 {
		entries = append(entries, fmt.Sprintf("2001:db8:%x::/48", r.IntN(1<<16)))
	}
	al, err := ParseAllowlist(entries)
	if err != nil {
		b.Fatal(err)
	}
	addrs := make([]netip.Addr, 0, 2*len(inside))
	for i, a := range inside {
		addrs = append(addrs, a)
		if i%2 == 0 {
			addrs = append(addrs, netip.AddrFrom4([4]byte{byte(224 + r.IntN(16)), byte(r.IntN(256)), 0, 1})) // never allowed
		} else {
			addrs = append(addrs, netip.MustParseAddr(fmt.Sprintf("2001:db8:%x::1", r.IntN(1<<16))))
		}
	}
	return al, addrs
}

// The target: O(log n), under 200 ns at 10 000 CIDRs. The sizes show
// the growth: a linear scan would be 10x slower at each step.
func BenchmarkAllowlistContainsScaling(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("cidrs=%d", n), func(b *testing.B) {
			al, addrs := bigAllowlist(b, n)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				al.Contains(addrs[i%len(addrs)])
				i++
			}
		})
	}
}
