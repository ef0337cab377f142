package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// delayProxy runs serveDelay in front of an echo backend; it stops at cleanup.
func delayProxy(t *testing.T, l linkSpec) string {
	t.Helper()
	_, echo := backends(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveDelay(ctx, ln, echo, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return ln.Addr().String()
}

// The proxy adds its round-trip time to every exchange (a lower bound: the
// emulation is correct only if nothing arrives early) and carries bytes and
// the half-close unchanged.
func TestDelayAddsRTT(t *testing.T) {
	const rtt = 60 * time.Millisecond
	addr := delayProxy(t, linkSpec{delay: rtt / 2})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	for i := range 3 {
		t0 := time.Now()
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil || b[0] != byte(i) {
			t.Fatalf("round trip %d: %v, %v", i, b, err)
		}
		if d := time.Since(t0); d < rtt {
			t.Errorf("round trip %d took %v, less than the %v the link adds", i, d, rtt)
		}
	}
	msg := bytes.Repeat([]byte("wan "), 100_000)
	go func() {
		c.Write(msg)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo of %d bytes through the proxy: got %d, %v", len(msg), len(got), err)
	}
}

// The rate limit spaces the bytes out: 1.5 MB at 10 MB/s cannot arrive in
// less than about 0.15 s (a lower bound again).
func TestDelayRateLimit(t *testing.T) {
	const rate = 10_000_000
	addr := delayProxy(t, linkSpec{rate: rate})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	msg := make([]byte, 1_500_000)
	t0 := time.Now()
	go func() {
		c.Write(msg)
		c.(*net.TCPConn).CloseWrite()
	}()
	n, err := io.Copy(io.Discard, c)
	if err != nil || n != int64(len(msg)) {
		t.Fatalf("got %d bytes, %v", n, err)
	}
	// Each direction is limited; the echo crosses the link twice, but the
	// two directions overlap, so only one crossing is a safe bound.
	if d, min := time.Since(t0), time.Duration(len(msg))*time.Second/rate; d < min {
		t.Errorf("%d bytes through a %d B/s link took %v, less than %v", len(msg), rate, d, min)
	}
}

func TestQueueLimit(t *testing.T) {
	if got := (linkSpec{delay: 25 * time.Millisecond, rate: 125_000_000}).queueLimit(); got != 6_250_000 {
		t.Errorf("queue limit at 1 Gbit/s, 25 ms one way = %d, want 6250000 (twice the bytes in flight)", got)
	}
	if got := (linkSpec{}).queueLimit(); got != 1<<20 {
		t.Errorf("queue limit of an unlimited link = %d, want 1 MiB", got)
	}
}
