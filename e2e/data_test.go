package e2e

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// hashResult is what one side of a connection sent and received.
type hashResult struct {
	sent, got   [32]byte
	nSent, nGot int64
	werr, rerr  error
}

// sourceSinkBackend sends size bytes from seed while it reads everything the
// tunnel sends, half-closes after sending, and reports both hashes on the
// returned channel (one result per connection).
func sourceSinkBackend(t *testing.T, seed uint64, size int64) (string, <-chan hashResult) {
	t.Helper()
	res := make(chan hashResult, 1)
	addr := startBackend(t, func(c *net.TCPConn) {
		var r hashResult
		var wg sync.WaitGroup
		wg.Go(func() { r.got, r.nGot, r.rerr = recvHashed(c) })
		r.sent, r.nSent, r.werr = sendHashed(c, seed, size)
		c.CloseWrite()
		wg.Wait()
		select {
		case res <- r:
		default:
			t.Errorf("backend: unexpected extra connection")
		}
	})
	return addr, res
}

// TestBulkBothWays moves 64 MiB each way through one stream at the same
// time and checks each side got exactly what the other sent.
func TestBulkBothWays(t *testing.T) {
	t.Parallel()
	const size = 64 << 20
	backend, res := sourceSinkBackend(t, 2, size)
	pk := pkiDir(t)
	_, cli := tunnelPair(t, pk, map[string]string{"bulk": backend})
	bothWays(t, cli.forwardAddr(t, "bulk"), res, size, 1)
}

// bothWays moves size bytes each way at once through the connection to
// addr, against a source-sink backend reporting on res, checks both
// SHA-256 sums and returns how long it took.
func bothWays(t *testing.T, addr string, res <-chan hashResult, size int64, seed uint64) time.Duration {
	t.Helper()
	c := dialLocal(t, addr)
	c.SetDeadline(time.Now().Add(90 * time.Second))
	start := time.Now()
	var local hashResult
	var wg sync.WaitGroup
	wg.Go(func() {
		local.sent, local.nSent, local.werr = sendHashed(c, seed, size)
		c.CloseWrite()
	})
	local.got, local.nGot, local.rerr = recvHashed(c)
	wg.Wait()
	elapsed := time.Since(start)
	if local.werr != nil || local.rerr != nil {
		t.Fatalf("through %s: write error %v, read error %v", addr, local.werr, local.rerr)
	}
	var remote hashResult
	select {
	case remote = <-res:
	case <-time.After(waitTimeout):
		t.Fatal("backend did not finish")
	}
	if remote.werr != nil || remote.rerr != nil {
		t.Fatalf("backend: write error %v, read error %v", remote.werr, remote.rerr)
	}
	if remote.nGot != size || remote.got != local.sent || local.nGot != size || local.got != remote.sent {
		t.Fatalf("through %s: backend got %d bytes (sha256 equal %v), sender got %d back (sha256 equal %v); %d each way sent",
			addr, remote.nGot, remote.got == local.sent, local.nGot, local.got == remote.sent, size)
	}
	return elapsed
}

// TestManyConcurrentStreams opens 200 local connections at once, each
// carrying a random 1 B..1 MiB through an echo backend, and checks all come
// back intact.
func TestManyConcurrentStreams(t *testing.T) {
	t.Parallel()
	const conns = 200
	pk := pkiDir(t)
	srv, cli := tunnelPair(t, pk, map[string]string{"echo": echoBackend(t)})
	addr := cli.forwardAddr(t, "echo")

	rng := rand.New(rand.NewPCG(20, 26))
	sizes := make([]int64, conns)
	cs := make([]*net.TCPConn, conns)
	deadline := time.Now().Add(90 * time.Second)
	for i := range cs {
		sizes[i] = 1 + rng.Int64N(1<<20)
		cs[i] = dialLocal(t, addr) // all open before any byte moves
		cs[i].SetDeadline(deadline)
	}

	errs := make([]error, conns)
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			var sent [32]byte
			var werr error
			var w sync.WaitGroup
			w.Go(func() {
				sent, _, werr = sendHashed(c, uint64(1000+i), sizes[i])
				c.CloseWrite()
			})
			got, n, rerr := recvHashed(c)
			w.Wait()
			switch {
			case werr != nil || rerr != nil:
				errs[i] = fmt.Errorf("write error %v, read error %v", werr, rerr)
			case n != sizes[i] || got != sent:
				errs[i] = fmt.Errorf("got %d bytes sha256 %x, sent %d sha256 %x", n, got[:8], sizes[i], sent[:8])
			}
		})
	}
	wg.Wait()
	failed := 0
	for i, err := range errs {
		if err != nil {
			failed++
			if failed <= 5 {
				t.Errorf("connection %d (%d bytes): %v", i, sizes[i], err)
			}
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d connections failed", failed, conns)
	}
	// Every stream was carried by the one session, each logged once closed.
	srv.waitEventN(t, waitTimeout, conns, "stream_closed", isEvent("stream_closed", "route", "echo"))
}

// TestHalfClose checks that shutting one write half reaches the far end as
// EOF while the other direction keeps working, both ways round.
func TestHalfClose(t *testing.T) {
	t.Parallel()
	const size = 1 << 20
	pk := pkiDir(t)
	answerer, answerSeed := answerBackend(t, size)
	greeter, greeted := greetBackend(t, size)
	_, cli := tunnelPair(t, pk, map[string]string{"answer": answerer, "greet": greeter})
	t.Run("client closes first", func(t *testing.T) {
		checkClientClosesFirst(t, cli.forwardAddr(t, "answer"), answerSeed, size)
	})
	t.Run("backend closes first", func(t *testing.T) {
		checkBackendClosesFirst(t, cli.forwardAddr(t, "greet"), greeted, size)
	})
}

// answerBackend answers only after it has seen EOF: the SHA-256 of what it
// got, then size-32 bytes from the seed it returns, then EOF.
func answerBackend(t *testing.T, size int64) (string, uint64) {
	const seed = 30
	return startBackend(t, func(c *net.TCPConn) {
		got, _, err := recvHashed(c)
		if err != nil {
			return
		}
		c.Write(got[:])
		io.Copy(c, randReader(seed, size-sha256.Size))
		c.CloseWrite()
	}), seed
}

// greetBackend speaks first and half-closes, then reads what comes after
// the other side saw its EOF, and reports both on the channel.
func greetBackend(t *testing.T, size int64) (string, <-chan hashResult) {
	greeted := make(chan hashResult, 1)
	return startBackend(t, func(c *net.TCPConn) {
		var r hashResult
		r.sent, r.nSent, r.werr = sendHashed(c, 31, size)
		c.CloseWrite()
		r.got, r.nGot, r.rerr = recvHashed(c)
		greeted <- r
	}), greeted
}

// checkClientClosesFirst sends size bytes to an answerBackend through addr,
// half-closes, and checks the whole answer comes back after the EOF.
func checkClientClosesFirst(t *testing.T, addr string, answerSeed uint64, size int64) {
	t.Helper()
	c := dialLocal(t, addr)
	c.SetDeadline(time.Now().Add(waitTimeout))
	sent, _, err := sendHashed(c, 32, size)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	answer, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the answer after CloseWrite: %v (got %d bytes)", err, len(answer))
	}
	if int64(len(answer)) != size {
		t.Fatalf("answer is %d bytes, want %d", len(answer), size)
	}
	if !bytes.Equal(answer[:sha256.Size], sent[:]) {
		t.Errorf("backend's hash of what it got = %x, want %x", answer[:8], sent[:8])
	}
	want, _ := io.ReadAll(randReader(answerSeed, size-sha256.Size))
	if !bytes.Equal(answer[sha256.Size:], want) {
		t.Errorf("answer body differs from what the backend sent")
	}
}

// checkBackendClosesFirst reads a greetBackend's greeting through addr to
// its EOF, then sends size bytes and checks the backend got them.
func checkBackendClosesFirst(t *testing.T, addr string, greeted <-chan hashResult, size int64) {
	t.Helper()
	c := dialLocal(t, addr)
	c.SetDeadline(time.Now().Add(waitTimeout))
	got, n, err := recvHashed(c)
	if err != nil {
		t.Fatalf("reading the greeting: %v", err)
	}
	sent, _, err := sendHashed(c, 33, size)
	if err != nil {
		t.Fatalf("writing after the backend's EOF: %v", err)
	}
	c.CloseWrite()
	var r hashResult
	select {
	case r = <-greeted:
	case <-time.After(waitTimeout):
		t.Fatal("backend did not see EOF after the client's CloseWrite")
	}
	if n != size || got != r.sent {
		t.Errorf("client got %d bytes sha256 %x, backend sent %d sha256 %x", n, got[:8], r.nSent, r.sent[:8])
	}
	if r.rerr != nil || r.nGot != size || r.got != sent {
		t.Errorf("backend got %d bytes sha256 %x (err %v), client sent %d sha256 %x", r.nGot, r.got[:8], r.rerr, size, sent[:8])
	}
}
