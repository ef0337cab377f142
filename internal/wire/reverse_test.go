package wire

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
)

func TestReadRequest(t *testing.T) {
	pub, _ := AppendPublish(nil, "ssh")
	open, _ := AppendHeader(nil, "db")
	tests := []struct {
		name   string
		in     []byte
		want   Request
		wantIs error // nil with err wanted: any *HeaderError
		bad    bool
	}{
		{name: "version 1", in: open, want: Request{Name: "db"}},
		{name: "publish", in: pub, want: Request{Name: "ssh", Publish: true}},
		{name: "publish bytes", in: []byte{2, 1, 2, 'd', 'b'}, want: Request{Name: "db", Publish: true}},
		{name: "connect from a client", in: []byte{2, 2, 2, 'd', 'b', 0}, bad: true, wantIs: ErrBadVersion},
		{name: "unknown kind", in: []byte{2, 9, 2, 'd', 'b'}, bad: true, wantIs: ErrBadVersion},
		{name: "version 3", in: []byte{3, 1, 2, 'd', 'b'}, bad: true, wantIs: ErrBadVersion},
		{name: "publish, zero length", in: []byte{2, 1, 0}, bad: true},
		{name: "publish, no length", in: []byte{2, 1}, bad: true, wantIs: io.ErrUnexpectedEOF},
		{name: "publish, short name", in: []byte{2, 1, 5, 'd'}, bad: true, wantIs: io.ErrUnexpectedEOF},
		{name: "publish, slash", in: []byte{2, 1, 3, 'a', '/', 'b'}, bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := bytes.NewReader(append(tt.in, "app"...))
			got, err := ReadRequest(r)
			if tt.bad {
				if he, ok := errors.AsType[*HeaderError](err); !ok {
					t.Fatalf("ReadRequest(%v) = %v, %v; want a *HeaderError", tt.in, got, err)
				} else if tt.wantIs != nil && !errors.Is(he, tt.wantIs) {
					t.Fatalf("ReadRequest(%v) error = %v, want errors.Is %v", tt.in, err, tt.wantIs)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ReadRequest(%v) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			if rest, _ := io.ReadAll(r); string(rest) != "app" {
				t.Fatalf("after the header, rest = %q, want the application's %q", rest, "app")
			}
		})
	}
	if _, err := ReadRequest(bytes.NewReader(nil)); err != io.EOF {
		t.Errorf("ReadRequest(empty) = %v, want io.EOF", err)
	}
}

// An old server reads a publish header with ReadHeader: it must fail on
// the version, having read only the first two bytes, so that it answers
// StatusBadHeader rather than taking the name for a route.
func TestReadHeaderRefusesPublish(t *testing.T) {
	pub, _ := AppendPublish(nil, "db")
	r := bytes.NewReader(pub)
	if _, err := ReadHeader(r); !errors.Is(err, ErrBadVersion) {
		t.Fatalf("ReadHeader(publish header) = %v, want ErrBadVersion", err)
	}
}

func TestConnectRoundTrip(t *testing.T) {
	v4s, v4d := netip.MustParseAddrPort("203.0.113.7:51234"), netip.MustParseAddrPort("192.0.2.1:5432")
	v6s, v6d := netip.MustParseAddrPort("[2001:db8::7]:40000"), netip.MustParseAddrPort("[2001:db8::1]:443")
	mapped := netip.AddrPortFrom(netip.MustParseAddr("::ffff:203.0.113.7"), 1)
	tests := []struct {
		name    string
		in      Connect
		want    Connect
		wantLen int
	}{
		{"ipv4", Connect{"db", v4s, v4d}, Connect{"db", v4s, v4d}, 4 + 2 + 12},
		{"ipv6", Connect{"db", v6s, v6d}, Connect{"db", v6s, v6d}, 4 + 2 + 36},
		{"mixed: ipv4 mapped into ipv6", Connect{"db", v4s, v6d}, Connect{"db", v4s, v6d}, 4 + 2 + 36},
		{"mapped ipv4 source", Connect{"db", mapped, v4d}, Connect{"db", netip.AddrPortFrom(mapped.Addr().Unmap(), 1), v4d}, 4 + 2 + 12},
		{"no addresses", Connect{Name: "db"}, Connect{Name: "db"}, 4 + 2},
		{"one address only", Connect{Name: "db", Source: v4s}, Connect{Name: "db"}, 4 + 2},
		{"longest", Connect{strings.Repeat("n", MaxRouteNameLen), v6s, v6d}, Connect{strings.Repeat("n", MaxRouteNameLen), v6s, v6d}, MaxConnectLen},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr, err := AppendConnect(nil, tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if len(hdr) != tt.wantLen {
				t.Errorf("header is %d bytes, want %d", len(hdr), tt.wantLen)
			}
			r := bytes.NewReader(append(hdr, "app"...))
			got, err := ReadConnect(r)
			if err != nil || got != tt.want {
				t.Fatalf("ReadConnect(AppendConnect(%+v)) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			if rest, _ := io.ReadAll(r); string(rest) != "app" {
				t.Fatalf("after the header, rest = %q", rest)
			}
		})
	}
	if _, err := AppendConnect(nil, Connect{Name: "a b"}); err == nil {
		t.Error("AppendConnect with an invalid name succeeded")
	}
	if _, err := AppendPublish(nil, ""); err == nil {
		t.Error("AppendPublish with an empty name succeeded")
	}
}

func TestReadConnectMalformed(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   []byte
	}{
		{"version 1 header", []byte{1, 2, 'd', 'b'}},
		{"publish from a server", []byte{2, 1, 2, 'd', 'b', 0}},
		{"no family", []byte{2, 2, 2, 'd', 'b'}},
		{"unknown family", []byte{2, 2, 2, 'd', 'b', 5}},
		{"short ipv4 block", []byte{2, 2, 2, 'd', 'b', 4, 1, 2, 3, 4, 5}},
		{"short ipv6 block", append([]byte{2, 2, 2, 'd', 'b', 6}, make([]byte, 35)...)},
		{"zero length", []byte{2, 2, 0, 0}},
		{"bad name", []byte{2, 2, 1, ' ', 0}},
		{"one byte", []byte{2}},
	} {
		if _, err := ReadConnect(bytes.NewReader(tt.in)); !errors.As(err, new(*HeaderError)) {
			t.Errorf("%s: ReadConnect(%v) = %v, want a *HeaderError", tt.name, tt.in, err)
		}
	}
	if _, err := ReadConnect(bytes.NewReader(nil)); err != io.EOF {
		t.Errorf("ReadConnect(empty) = %v, want io.EOF", err)
	}
}

func FuzzReadRequest(f *testing.F) {
	f.Add([]byte{1, 2, 'd', 'b'})
	f.Add([]byte{2, 1, 2, 'd', 'b'})
	f.Add([]byte{2, 2, 2, 'd', 'b', 0})
	f.Add([]byte{2, 1, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		req, err := ReadRequest(r)
		if err != nil {
			return
		}
		consumed := in[:len(in)-r.Len()]
		var again []byte
		if req.Publish {
			again, err = AppendPublish(nil, req.Name)
		} else {
			again, err = AppendHeader(nil, req.Name)
		}
		if err != nil || !bytes.Equal(again, consumed) {
			t.Fatalf("round trip of %+v: %v, %v != %v", req, err, again, consumed)
		}
	})
}

func FuzzReadConnect(f *testing.F) {
	for _, c := range []Connect{
		{Name: "db"},
		{"db", netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("10.0.0.2:2")},
		{"db", netip.MustParseAddrPort("[::1]:1"), netip.MustParseAddrPort("[::2]:2")},
	} {
		b, _ := AppendConnect(nil, c)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		c, err := ReadConnect(r)
		if err != nil {
			return
		}
		consumed := len(in) - r.Len()
		if consumed > MaxConnectLen {
			t.Fatalf("ReadConnect consumed %d bytes, more than %d", consumed, MaxConnectLen)
		}
		again, err := AppendConnect(nil, c)
		if err != nil {
			t.Fatalf("accepted %+v does not re-encode: %v", c, err)
		}
		c2, err := ReadConnect(bytes.NewReader(again))
		if err != nil || c2 != c {
			t.Fatalf("round trip: %+v -> %v -> %+v, %v", c, again, c2, err)
		}
	})
}

// The bytes of docs/PROTOCOL.md's example (section 7.6).
func TestReverseExampleBytes(t *testing.T) {
	pub, _ := AppendPublish(nil, "ssh")
	if want := []byte{0x02, 0x01, 0x03, 's', 's', 'h'}; !bytes.Equal(pub, want) {
		t.Errorf("publish header % x, want % x", pub, want)
	}
	c, _ := AppendConnect(nil, Connect{"ssh", netip.MustParseAddrPort("203.0.113.7:51234"), netip.MustParseAddrPort("192.0.2.1:2222")})
	want := []byte{0x02, 0x02, 0x03, 's', 's', 'h', 0x04, 0xcb, 0x00, 0x71, 0x07, 0xc0, 0x00, 0x02, 0x01, 0xc8, 0x22, 0x08, 0xae}
	if !bytes.Equal(c, want) {
		t.Errorf("connect header % x, want % x", c, want)
	}
}
