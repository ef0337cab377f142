// Package netfilter owns IP allowlisting and the early rejection of
// connections, decided on the peer address before any byte is read, and
// the PROXY protocol headers that carry a client's address (read from
// trusted upstreams, written to backends).
package netfilter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
)

// EntryError is returned by ParseEntry and ParseAllowlist for an entry that
// is not a usable prefix. Err is the cause; errors.Is/As see through it.
type EntryError struct {
	Entry string // the entry, with surrounding whitespace trimmed
	Err   error
}

func (e *EntryError) Error() string {
	return fmt.Sprintf("netfilter: allow entry %q: %v", e.Entry, e.Err)
}

func (e *EntryError) Unwrap() error { return e.Err }

// ErrZone is the cause (inside an *EntryError) of an entry that carries an
// IPv6 zone ("fe80::1%eth0"): a zone names a local interface, not a peer.
var ErrZone = errors.New("zones are not allowed")

// ErrEmptyEntry is the cause (inside an *EntryError) of an empty or
// all-whitespace entry.
var ErrEmptyEntry = errors.New("empty entry")

// HostBitsError is the cause (inside an *EntryError) of a prefix with bits
// set after the prefix length ("10.0.0.1/8"). Masked is the form to write
// instead; it is not applied silently, so configs stay exact.
type HostBitsError struct {
	Masked netip.Prefix
}

func (e *HostBitsError) Error() string {
	return fmt.Sprintf("host bits set after the prefix length, write %q", e.Masked.String())
}

// ParseEntry parses one allowlist entry: a CIDR prefix ("10.0.0.0/8",
// "2001:db8::/32") or a bare address (taken as /32 or /128). Whitespace
// around the entry is trimmed. An IPv4-mapped IPv6 prefix
// ("::ffff:10.0.0.0/104") is returned in its IPv4 form ("10.0.0.0/8"). Zones
// and prefixes with host bits set are refused. Errors are *EntryError.
func ParseEntry(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	fail := func(err error) (netip.Prefix, error) {
		return netip.Prefix{}, &EntryError{Entry: s, Err: err}
	}
	if s == "" {
		return fail(ErrEmptyEntry)
	}
	if strings.Contains(s, "%") {
		return fail(ErrZone)
	}
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return fail(err)
		}
		if m := p.Masked(); m != p {
			return fail(&HostBitsError{Masked: m})
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fail(err)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	// A masked prefix whose address is IPv4-mapped has at least 96 bits (the
	// ::ffff marker lies inside the prefix), so this conversion is exact.
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p, nil
}

// Allowlist is an immutable set of IPv4 and IPv6 prefixes. Membership tests
// take O(log n). Safe for concurrent use. The zero value is an empty list;
// build a useful one with ParseAllowlist.
type Allowlist struct {
	prefixes []netip.Prefix // sorted, without duplicates, as parsed
	v4       []span4        // merged, sorted, non-overlapping, non-adjacent
	v6       []span6        // likewise
}

// span4 is the closed range [lo, hi] of IPv4 addresses as integers.
type span4 struct{ lo, hi uint32 }

// span6 is the closed range [lo, hi] of IPv6 addresses as integers.
type span6 struct{ lo, hi u128 }

// u128 is a 128-bit unsigned integer (an IPv6 address in host order).
type u128 struct{ hi, lo uint64 }

func (u u128) cmp(v u128) int {
	switch {
	case u.hi < v.hi:
		return -1
	case u.hi > v.hi:
		return 1
	case u.lo < v.lo:
		return -1
	case u.lo > v.lo:
		return 1
	}
	return 0
}

func (u u128) isMax() bool { return u.hi == math.MaxUint64 && u.lo == math.MaxUint64 }

// next returns u+1; u must not be the maximum.
func (u u128) next() u128 {
	if u.lo == math.MaxUint64 {
		return u128{u.hi + 1, 0}
	}
	return u128{u.hi, u.lo + 1}
}

func addr4(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func addr6(a netip.Addr) u128 {
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

// ParseAllowlist parses entries with ParseEntry and returns their union.
// Duplicates are dropped. An empty list is valid and contains nothing (the
// CLI refuses to start without an allowlist; this package does not decide
// that). The first bad entry ends parsing with an *EntryError naming it.
func ParseAllowlist(entries []string) (*Allowlist, error) {
	ps := make([]netip.Prefix, 0, len(entries))
	for _, e := range entries {
		p, err := ParseEntry(e)
		if err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}
	return newAllowlist(ps), nil
}

// newAllowlist builds an Allowlist from valid, masked, unmapped prefixes.
func newAllowlist(ps []netip.Prefix) *Allowlist {
	ps = slices.Clone(ps)
	slices.SortFunc(ps, netip.Prefix.Compare)
	ps = slices.Compact(ps)

	a := &Allowlist{prefixes: ps}
	var v4 []span4
	var v6 []span6
	for _, p := range ps {
		if p.Addr().Is4() {
			lo := addr4(p.Addr())
			v4 = append(v4, span4{lo, lo | math.MaxUint32>>p.Bits()})
			continue
		}
		lo := addr6(p.Addr())
		hi := lo
		if b := p.Bits(); b >= 64 {
			hi.lo |= math.MaxUint64 >> (b - 64)
		} else {
			hi.hi |= math.MaxUint64 >> b
			hi.lo = math.MaxUint64
		}
		v6 = append(v6, span6{lo, hi})
	}
	a.v4 = merge4(v4)
	a.v6 = merge6(v6)
	return a
}

// merge4 merges overlapping and adjacent ranges; in must be sorted by lo.
func merge4(in []span4) []span4 {
	var out []span4
	for _, s := range in {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if last.hi == math.MaxUint32 || s.lo <= last.hi+1 {
				last.hi = max(last.hi, s.hi)
				continue
			}
		}
		out = append(out, s)
	}
	return out
}

// merge6 merges overlapping and adjacent ranges; in must be sorted by lo.
func merge6(in []span6) []span6 {
	var out []span6
	for _, s := range in {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if last.hi.isMax() || s.lo.cmp(last.hi.next()) <= 0 {
				if s.hi.cmp(last.hi) > 0 {
					last.hi = s.hi
				}
				continue
			}
		}
		out = append(out, s)
	}
	return out
}

// Contains reports whether ip lies in one of the prefixes. The address is
// unmapped first (::ffff:10.1.2.3 is tested against the IPv4 rules, never
// against IPv6 ones such as ::/0) and its zone is ignored. An invalid
// address is not contained. A nil *Allowlist contains nothing.
func (a *Allowlist) Contains(ip netip.Addr) bool {
	if a == nil || !ip.IsValid() {
		return false
	}
	ip = ip.Unmap()
	if ip.Is4() {
		x := addr4(ip)
		r := a.v4
		// Find the first range whose hi >= x.
		i, j := 0, len(r)
		for i < j {
			h := int(uint(i+j) >> 1)
			if r[h].hi < x {
				i = h + 1
			} else {
				j = h
			}
		}
		return i < len(r) && r[i].lo <= x
	}
	x := addr6(ip.WithZone(""))
	r := a.v6
	i, j := 0, len(r)
	for i < j {
		h := int(uint(i+j) >> 1)
		if r[h].hi.cmp(x) < 0 {
			i = h + 1
		} else {
			j = h
		}
	}
	return i < len(r) && r[i].lo.cmp(x) <= 0
}

// CoversAllIPv4 reports whether every IPv4 address is in the list, however
// the prefixes say it: 0.0.0.0/0, 0.0.0.0/1 with 128.0.0.0/1,
// ::ffff:0.0.0.0/96 (which ParseEntry reads as 0.0.0.0/0), or any other
// set of prefixes whose union is the whole space. Safe on a nil *Allowlist.
func (a *Allowlist) CoversAllIPv4() bool {
	return a != nil && len(a.v4) == 1 && a.v4[0] == span4{0, math.MaxUint32}
}

// CoversAllIPv6 reports whether every IPv6 address is in the list, however
// the prefixes say it (::/0, ::/1 with 8000::/1, ...). IPv4-mapped
// addresses are tested against the IPv4 prefixes (see Contains), so this
// says nothing about IPv4 clients. Safe on a nil *Allowlist.
func (a *Allowlist) CoversAllIPv6() bool {
	return a != nil && len(a.v6) == 1 && a.v6[0].lo == (u128{}) && a.v6[0].hi.isMax()
}

// Len returns the number of distinct prefixes in the list (duplicates
// dropped, overlapping prefixes counted separately).
func (a *Allowlist) Len() int {
	if a == nil {
		return 0
	}
	return len(a.prefixes)
}

// Prefixes returns a copy of the prefixes, sorted (IPv4 before IPv6, then by
// address and length), in their normalised form.
func (a *Allowlist) Prefixes() []netip.Prefix {
	if a == nil {
		return nil
	}
	return slices.Clone(a.prefixes)
}

// String returns the sorted prefixes separated by commas ("10.0.0.0/8,::1/128"),
// or "" for an empty list. ParseAllowlist of its comma-split parts rebuilds
// the same list.
func (a *Allowlist) String() string {
	if a == nil {
		return ""
	}
	var b strings.Builder
	for i, p := range a.prefixes {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(p.String())
	}
	return b.String()
}
