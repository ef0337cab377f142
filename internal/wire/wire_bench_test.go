package wire

import (
	"bytes"
	"io"
	"testing"
)

// The header is written once and read once per stream: both should cost
// nanoseconds and no allocation beyond the route name.
func BenchmarkAppendHeader(b *testing.B) {
	buf := make([]byte, 0, MaxHeaderLen)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = AppendHeader(buf[:0], "postgres-primary.eu-west"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadHeader(b *testing.B) {
	hdr, err := AppendHeader(nil, "postgres-primary.eu-west")
	if err != nil {
		b.Fatal(err)
	}
	r := bytes.NewReader(hdr)
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(hdr)
		if _, err := ReadHeader(r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkStatusRoundTrip(b *testing.B) {
	var buf bytes.Buffer
	b.ReportAllocs()
	for b.Loop() {
		buf.Reset()
		if err := WriteStatus(&buf, StatusOK); err != nil {
			b.Fatal(err)
		}
		if err := ReadStatus(io.Reader(&buf)); err != nil {
			b.Fatal(err)
		}
	}
}
