package wire

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	for _, route := range []string{"db", "a", "cache-1", "x_y.z", strings.Repeat("r", MaxRouteNameLen)} {
		hdr, err := AppendHeader(nil, route)
		if err != nil {
			t.Fatalf("AppendHeader(%q): %v", route, err)
		}
		// Application bytes right behind the header must stay unread.
		r := bytes.NewReader(append(hdr, "payload"...))
		got, err := ReadHeader(r)
		if err != nil || got != route {
			t.Fatalf("ReadHeader(AppendHeader(%q)) = %q, %v", route, got, err)
		}
		rest, _ := io.ReadAll(r)
		if string(rest) != "payload" {
			t.Fatalf("after header of %q, rest = %q, want %q", route, rest, "payload")
		}
	}
}

func TestReadHeaderMalformed(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		wantEOF bool
		wantIs  error
	}{
		{name: "empty stream", in: nil, wantEOF: true},
		{name: "one byte", in: []byte{1}, wantIs: io.ErrUnexpectedEOF},
		{name: "version 0", in: []byte{0, 2, 'd', 'b'}, wantIs: ErrBadVersion},
		{name: "version 2", in: []byte{2, 2, 'd', 'b'}, wantIs: ErrBadVersion},
		{name: "TLS record", in: []byte{0x16, 0x03, 0x01}, wantIs: ErrBadVersion},
		{name: "zero length", in: []byte{1, 0}},
		{name: "short name", in: []byte{1, 5, 'd', 'b'}, wantIs: io.ErrUnexpectedEOF},
		{name: "space in name", in: []byte{1, 3, 'd', ' ', 'b'}},
		{name: "slash in name", in: []byte{1, 3, 'a', '/', 'b'}},
		{name: "NUL in name", in: []byte{1, 2, 'a', 0}},
		{name: "non-ASCII name", in: []byte{1, 2, 0xc3, 0xa9}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadHeader(bytes.NewReader(tt.in))
			if tt.wantEOF {
				if err != io.EOF {
					t.Fatalf("ReadHeader(%v) error = %v, want io.EOF", tt.in, err)
				}
				return
			}
			var he *HeaderError
			if !errors.As(err, &he) {
				t.Fatalf("ReadHeader(%v) error = %v, want *HeaderError", tt.in, err)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Fatalf("ReadHeader(%v) error = %v, want errors.Is %v", tt.in, err, tt.wantIs)
			}
		})
	}
}

func TestCheckRouteName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"db", true}, {"A-Z_0.9", true}, {strings.Repeat("a", 255), true},
		{"", false}, {strings.Repeat("a", 256), false}, {"a b", false}, {"a:b", false},
		{"a/b", false}, {"é", false}, {"a\n", false},
	}
	for _, tt := range tests {
		if err := CheckRouteName(tt.name); (err == nil) != tt.ok {
			t.Errorf("CheckRouteName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if _, err := AppendHeader(nil, tt.name); (err == nil) != tt.ok {
			t.Errorf("AppendHeader(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestStatus(t *testing.T) {
	want := map[Status]string{
		StatusOK: "ok", StatusUnknownRoute: "unknown_route", StatusForbidden: "forbidden",
		StatusBackendUnreachable: "backend_unreachable", StatusOverLimit: "over_limit",
		StatusBadHeader: "bad_header", 6: "status_6", 255: "status_255",
	}
	for s, name := range want {
		if got := s.String(); got != name {
			t.Errorf("Status(%d).String() = %q, want %q", s, got, name)
		}
		if s.IsValid() != (s <= StatusBadHeader) {
			t.Errorf("Status(%d).IsValid() = %v", s, s.IsValid())
		}
		var buf bytes.Buffer
		if err := WriteStatus(&buf, s); err != nil {
			t.Fatal(err)
		}
		if buf.Len() != 1 || buf.Bytes()[0] != byte(s) {
			t.Fatalf("WriteStatus(%d) wrote %v", s, buf.Bytes())
		}
		err := ReadStatus(&buf)
		if s == StatusOK {
			if err != nil {
				t.Errorf("ReadStatus(ok) = %v, want nil", err)
			}
			continue
		}
		var se *StatusError
		if !errors.As(err, &se) || se.Code != s {
			t.Errorf("ReadStatus(%d) = %v, want *StatusError{%d}", s, err, s)
		}
	}
	if err := ReadStatus(bytes.NewReader(nil)); err != io.EOF {
		t.Errorf("ReadStatus(empty) = %v, want io.EOF", err)
	}
}

func FuzzReadHeader(f *testing.F) {
	f.Add([]byte{1, 2, 'd', 'b'})
	f.Add([]byte{1, 0})
	f.Add([]byte{2, 1, 'a'})
	f.Add([]byte{1, 255})
	f.Add([]byte{0x16, 3, 1, 0, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		route, err := ReadHeader(r)
		if err != nil {
			return
		}
		consumed := len(in) - r.Len()
		if consumed != 2+len(route) || consumed > MaxHeaderLen {
			t.Fatalf("ReadHeader consumed %d bytes for route %q", consumed, route)
		}
		hdr, err := AppendHeader(nil, route)
		if err != nil {
			t.Fatalf("accepted route %q does not re-encode: %v", route, err)
		}
		if !bytes.Equal(hdr, in[:consumed]) {
			t.Fatalf("round trip: %v != %v", hdr, in[:consumed])
		}
	})
}
