package netfilter

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/audit"
)

// waitFor polls cond until it returns nil or d passes.
func waitFor(t *testing.T, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for err := cond(); err != nil; err = cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", d, err)
		}
		time.Sleep(5 * time.Millisecond) // poll interval, not synchronisation
	}
}

// listen returns a TCP listener on 127.0.0.1:0 wrapped by f. It is closed
// at cleanup.
func listen(t *testing.T, f *Filter) net.Listener {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := f.WrapListener(inner)
	t.Cleanup(func() { ln.Close() })
	return ln
}

// acceptLoop accepts from ln in a goroutine until ln is closed and delivers
// the accepted conns. Cleanup closes ln, waits for the goroutine and closes
// the conns.
func acceptLoop(t *testing.T, ln net.Listener) <-chan net.Conn {
	t.Helper()
	ch := make(chan net.Conn, 16)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(ch)
		for {
			c, err := ln.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("Accept: %v", err)
				}
				return
			}
			ch <- c
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		for c := range ch {
			c.Close()
		}
	})
	return ch
}

// dial connects to ln from the local address from (port chosen by the
// kernel). Loopback answers for all of 127.0.0.0/8.
func dial(t *testing.T, ln net.Listener, from string) (*net.TCPConn, error) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.DialContext(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn), nil
}

// dialFrom is dial for a peer that must connect.
func dialFrom(t *testing.T, ln net.Listener, from string) *net.TCPConn {
	t.Helper()
	c, err := dial(t, ln, from)
	if err != nil {
		t.Fatalf("dial from %s: %v", from, err)
	}
	return c
}

// expectReset dials ln from the address from and fails unless the
// connection ends in a reset: either during connect (the reset came before
// the dialer checked the socket) or on the first read.
func expectReset(t *testing.T, ln net.Listener, from string) {
	t.Helper()
	c, err := dial(t, ln, from)
	if err == nil {
		expectReadReset(t, c)
		return
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("dial from %s = %v, want success or ECONNRESET", from, err)
	}
}

// expectReadReset reads from c and fails unless the read ends in a reset.
func expectReadReset(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read from a rejected conn: %d bytes, err %v; want ECONNRESET", n, err)
	}
}

func acceptOne(t *testing.T, ch <-chan net.Conn) net.Conn {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("Accept returned nothing in 5s")
		return nil
	}
}

func TestWrapListenerRejectsWithReset(t *testing.T) {
	f, hook, clock := newTestFilter(t, 0, "127.0.0.1/32")
	ln := listen(t, f)
	accepted := acceptLoop(t, ln)

	// The rejected peer connects first and sends nothing: Accept must not
	// wait on it, and it must see a reset, not the FIN of a plain close.
	expectReset(t, ln, "127.0.0.2")
	allowed := dialFrom(t, ln, "127.0.0.1")
	c := acceptOne(t, accepted)
	if ip, _ := PeerAddr(c.RemoteAddr()); ip != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("Accept returned a conn from %v, want 127.0.0.1", c.RemoteAddr())
	}
	if c.LocalAddr().String() != allowed.RemoteAddr().String() || c.RemoteAddr().String() != allowed.LocalAddr().String() {
		t.Errorf("Accept returned %v->%v, want the allowed conn %v->%v", c.RemoteAddr(), c.LocalAddr(), allowed.LocalAddr(), allowed.RemoteAddr())
	}
	waitFor(t, 5*time.Second, func() error {
		if n := len(rejectLines(t, hook)); n != 1 {
			return fmt.Errorf("logged %d conn_rejected lines, want 1", n)
		}
		return nil
	})
	lines := rejectLines(t, hook)
	if d := lines[0].Data; d[audit.Reason] != ReasonIPNotAllowed || addrHost(d[audit.Addr]) != "127.0.0.2" {
		t.Errorf("line fields = %v, want reason %s addr 127.0.0.2", d, ReasonIPNotAllowed)
	}

	for range 5 {
		expectReset(t, ln, "127.0.0.2")
	}
	waitFor(t, 5*time.Second, func() error {
		if n := f.Stats().Rejected[ReasonIPNotAllowed]; n != 6 {
			return errors.New("rejections not counted yet")
		}
		return nil
	})
	if n := len(rejectLines(t, hook)); n != 1 {
		t.Fatalf("5 more rejections inside the interval: %d lines, want still 1", n)
	}

	clock.Advance(DefaultLogInterval)
	expectReset(t, ln, "127.0.0.2")
	waitFor(t, 5*time.Second, func() error {
		if n := len(rejectLines(t, hook)); n != 2 {
			return errors.New("no line after the interval yet")
		}
		return nil
	})
	if d := rejectLines(t, hook)[1].Data; d[audit.Count] != uint64(6) || addrHost(d[audit.Addr]) != "127.0.0.2" {
		t.Errorf("line after the interval = %v, want addr 127.0.0.2 count 6", d)
	}
}

func TestRejectedPeerThatSentBytesGetsReset(t *testing.T) {
	f, _, _ := newTestFilter(t, 0, "127.0.0.1/32")
	ln := listen(t, f)

	// Bytes are queued in the server's receive buffer before Accept runs.
	rejected := dialFrom(t, ln, "127.0.0.2")
	if _, err := rejected.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	accepted := acceptLoop(t, ln)
	dialFrom(t, ln, "127.0.0.1")
	acceptOne(t, accepted)
	expectReadReset(t, rejected)
	if n := f.Stats().Rejected[ReasonIPNotAllowed]; n != 1 {
		t.Errorf("counted %d rejections, want 1", n)
	}
}

// chanListener is a net.Listener fed from a channel.
type chanListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
	closes int // guarded by once's single call
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { l.closes++; close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return stringAddr("chan:0") }

func TestAcceptNeverReadsRejectedPeers(t *testing.T) {
	f, _, _ := newTestFilter(t, 0, "10.0.0.0/8")
	inner := &chanListener{conns: make(chan net.Conn, 8), closed: make(chan struct{})}
	ln := f.WrapListener(inner)

	// fakeConn fails the test on Read, and its SetLinger/Close are recorded.
	bad := []*fakeConn{
		newFakeConn(t, "192.0.2.1:1000"),
		newFakeConn(t, "[2001:db8::1]:1000"),
		{t: t, remote: stringAddr("no address")},
	}
	for _, c := range bad {
		inner.conns <- c
	}
	good := newFakeConn(t, "[::ffff:10.1.2.3]:1000")
	inner.conns <- good

	c, err := ln.Accept()
	if err != nil || c != good {
		t.Fatalf("Accept = %v, %v; want the allowed conn", c, err)
	}
	for _, c := range bad {
		if linger, closed := c.ended(); len(linger) != 1 || linger[0] != 0 || closed != 1 {
			t.Errorf("%v ended with SetLinger %v and %d closes; want [0] and 1", c.remote, linger, closed)
		}
	}
	if linger, closed := good.ended(); len(linger) != 0 || closed != 0 {
		t.Errorf("allowed conn was touched: SetLinger %v, %d closes", linger, closed)
	}
	if n := f.Stats().Rejected[ReasonIPNotAllowed]; n != 3 {
		t.Errorf("counted %d rejections, want 3", n)
	}

	if ln.Addr() != inner.Addr() {
		t.Errorf("Addr() = %v, want the inner %v", ln.Addr(), inner.Addr())
	}
	for range 2 {
		if err := ln.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	if inner.closes != 1 {
		t.Errorf("inner listener closed %d times, want 1", inner.closes)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close = %v, want net.ErrClosed", err)
	}
}

func TestWrapListenerCloseIdempotentTCP(t *testing.T) {
	f, _, _ := newTestFilter(t, 0, "127.0.0.1/32")
	ln := listen(t, f)
	first, second := ln.Close(), ln.Close()
	if first != nil || second != nil {
		t.Errorf("Close twice = %v, %v; want nil, nil", first, second)
	}
}

// addrHost is the host of an addr field (host:port), and must have a port.
func addrHost(v any) string {
	s, _ := v.(string)
	host, _, err := net.SplitHostPort(s)
	if err != nil {
		return "no port in " + s
	}
	return host
}
