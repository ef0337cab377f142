package pipe

import (
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// socketWithoutFD is a TCP conn whose raw socket readMore cannot reach, as
// on a platform without a non-blocking socket read (Windows): readMore then
// takes the deadline path on a real socket. CloseWrite stays.
type socketWithoutFD struct{ net.Conn }

func (c socketWithoutFD) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

// The deadline path on a socket finds nothing (the Read fails on the passed
// deadline before it looks) and must leave the conn as it was: no error,
// no deadline left behind, the waiting bytes still there.
func TestReadMoreDeadlineOnSocket(t *testing.T) {
	c, peer := tcpPair(t)
	if _, err := peer.Write([]byte("waiting")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // let the bytes arrive; a miss only makes the test weaker
	n, err := readMoreDeadline(c, make([]byte, 64))
	if err != nil {
		t.Fatalf("readMoreDeadline on a socket = %d, %v; want no error", n, err)
	}
	got := make([]byte, 7-n)
	done := make(chan error, 1)
	go func() { _, err := io.ReadFull(c, got); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Read after readMoreDeadline: %v (a deadline left behind?)", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read after readMoreDeadline did not return the waiting bytes")
	}
}

// Run over sockets whose fd readMore cannot reach moves every byte exactly,
// in messages around the small buffer's size and in bulk: the copy on
// Windows.
func TestRunWithoutNonBlockingRead(t *testing.T) {
	w := tcpWorld(t)
	w.a, w.b = socketWithoutFD{w.a}, socketWithoutFD{w.b}
	if _, ok := w.a.(syscall.Conn); ok {
		t.Fatal("the wrapper still exposes SyscallConn")
	}
	r := start(t, w, 0)
	var client, backend *side
	var wg sync.WaitGroup
	wg.Go(func() { client = runSide(w.client, 8<<20+smallSize+1, 3) })
	wg.Go(func() { backend = runSide(w.backend, smallSize+1, 4) })
	wg.Wait()
	res := r.wait(t, 30*time.Second)
	if client.err != nil || backend.err != nil || res.err != nil {
		t.Fatalf("client side: %v; backend side: %v; Run: %v", client.err, backend.err, res.err)
	}
	if backend.got != client.sent || client.got != backend.sent {
		t.Errorf("bytes differ: backend got %d (sha256 equal %v), client got %d (sha256 equal %v)",
			backend.gotN, backend.got == client.sent, client.gotN, client.got == backend.sent)
	}
}
