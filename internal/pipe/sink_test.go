//go:build unix

package pipe

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// sinkConn is a Sinker over a TCP conn: Lend returns what the test queues,
// and the test plays the session's reader by calling the sink it was given.
type sinkConn struct {
	*net.TCPConn
	lends chan []byte // closed: io.EOF
	mu    sync.Mutex
	sink  func([]byte) int
	sets  int
}

func (c *sinkConn) Lend(int) ([]byte, error) {
	b, ok := <-c.lends
	if !ok {
		return nil, io.EOF
	}
	return b, nil
}

func (c *sinkConn) Return(int) {}

func (c *sinkConn) SetSink(fn func([]byte) int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sink, c.sets = fn, c.sets+1
}

func (c *sinkConn) current() func([]byte) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sink
}

// Run gives a Sinker a sink once its first lend is back, the sink writes to
// the destination socket at once and counts as the direction's bytes, and
// the sink is taken back when the direction ends.
func TestRunSetsSink(t *testing.T) {
	srcConn, _ := tcpPair(t)
	dst, peer := tcpPair(t)
	src := &sinkConn{TCPConn: srcConn, lends: make(chan []byte)}
	var count Counters
	type result struct{ ab, ba int64 }
	res := make(chan result, 1)
	go func() {
		ab, ba, _ := Run(src, dst, Options{Count: &count})
		res <- result{ab, ba}
	}()

	if src.current() != nil {
		t.Fatal("a sink before the first lend came back")
	}
	src.lends <- []byte("first ")
	var fn func([]byte) int
	for deadline := time.Now().Add(5 * time.Second); fn == nil; fn = src.current() {
		if time.Now().After(deadline) {
			t.Fatal("no sink 5 s after the first lend")
		}
		time.Sleep(time.Millisecond)
	}
	if n := fn([]byte("sunk")); n != 4 {
		t.Fatalf("the sink took %d of 4 bytes", n)
	}
	close(src.lends)
	got, err := io.ReadAll(peer)
	if err != nil || string(got) != "first sunk" {
		t.Fatalf("the destination read %q, %v; want %q then EOF", got, err, "first sunk")
	}
	peer.Close()
	r := <-res
	if r.ab != 10 || count.AToB.Load() != 10 {
		t.Errorf("a->b counted %d (Counters %d), want 10: the sink's bytes count", r.ab, count.AToB.Load())
	}
	if src.current() != nil || src.sets != 2 {
		t.Errorf("after Run: sink still set, or SetSink called %d times (want set, then removed)", src.sets)
	}
}
