package mux

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"
)

// A recvBuf gives back every byte in order whatever the sizes of the
// fills and reads, holds no chunk once read empty, and keeps the chunk the
// guard's reader is writing into until it commits, even if dropped.
func TestRecvBuf(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var q recvBuf
	var sent, got bytes.Buffer
	for range 2000 {
		if rng.IntN(2) == 0 {
			b := q.fill(1 + rng.IntN(3*chunkSize))
			n := rng.IntN(len(b) + 1)
			for i := range n {
				b[i] = byte(sent.Len() + i)
			}
			sent.Write(b[:n])
			q.commit(n)
		} else {
			p := make([]byte, rng.IntN(2*chunkSize)+1)
			got.Write(p[:q.read(p)])
		}
		if q.n != sent.Len()-got.Len() {
			t.Fatalf("n = %d, want %d", q.n, sent.Len()-got.Len())
		}
	}
	p := make([]byte, sent.Len())
	got.Write(p[:q.read(p)])
	if !bytes.Equal(sent.Bytes(), got.Bytes()) {
		t.Fatal("bytes read differ from bytes filled")
	}
	if len(q.chunks) != 0 {
		t.Errorf("an empty buffer holds %d chunks", len(q.chunks))
	}

	// A small frame into an empty buffer takes a small chunk: a byte on
	// each of many streams costs 2 KiB each, not 32.
	var tiny recvBuf
	tiny.fill(1)
	tiny.commit(1)
	if c := tiny.chunks[0]; len(c.b) != smallChunkSize {
		t.Errorf("a 1-byte frame into an empty buffer took a %d-byte chunk, want %d", len(c.b), smallChunkSize)
	}
	tiny.drop()

	// Dropped while filling and lent: the slices out stay valid, nothing of
	// them is readable afterwards, and the buffer works on.
	q.fill(100)
	q.commit(100)
	lent := q.lend(50)
	b := q.fill(10)
	q.drop()
	b[0] = 1 // the guard's reader may still write here
	_ = lent[0]
	q.commit(10)
	q.giveBack(len(lent))
	if q.n != 0 || len(q.chunks) != 0 || q.read(make([]byte, 10)) != 0 {
		t.Errorf("after drop, commit and giveBack: n %d, %d chunks", q.n, len(q.chunks))
	}
	copy(q.fill(3), "abc")
	q.commit(3)
	if got := q.lend(10); string(got) != "abc" {
		t.Fatalf("lend after a drop = %q", got)
	}
	q.giveBack(2)
	if p := make([]byte, 5); q.read(p) != 1 || p[0] != 'c' {
		t.Fatalf("read after giveBack(2) = %q", p)
	}
}

// Data the peer sent before its FIN is read before io.EOF, however the
// frames split it; a read deadline returns a timeout, but data already
// received is returned even past it.
func TestStreamReadOrderAndDeadline(t *testing.T) {
	_, cs, ss := sessionPair(t)
	local, remote := openPair(t, cs, ss)
	remote.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := remote.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past its deadline = %v, want a timeout", err)
	} else if ne, ok := errors.AsType[net.Error](err); !ok || !ne.Timeout() {
		t.Fatalf("the timeout %v is not a net.Error timeout", err)
	}
	msg := bytes.Repeat([]byte("abcdefgh"), 100_000) // 800 KB: several windows
	go func() {
		local.Write(msg)
		local.CloseWrite()
	}()
	waitFor(t, 5*time.Second, "data buffered", func() bool {
		ss.g.mu.Lock()
		defer ss.g.mu.Unlock()
		return ss.g.streams[remote.StreamID()].rq.n > 0
	})
	remote.SetReadDeadline(time.Now().Add(-time.Second)) // passed: buffered data still comes
	if n, err := remote.Read(make([]byte, 10)); n == 0 || err != nil {
		t.Fatalf("Read of buffered data past the deadline = %d, %v", n, err)
	}
	remote.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, err := io.ReadAll(remote)
	if err != nil || len(rest) != len(msg)-10 || !bytes.Equal(rest, msg[10:]) {
		t.Fatalf("read %d bytes (%v) before EOF, want the %d that followed", len(rest), err, len(msg)-10)
	}
}
