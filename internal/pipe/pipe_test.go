package pipe

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tcpPair returns the two ends of a loopback TCP connection, closed at
// cleanup.
func tcpPair(tb testing.TB) (*net.TCPConn, *net.TCPConn) {
	tb.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	type accepted struct {
		c   *net.TCPConn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.AcceptTCP()
		ch <- accepted{c, err}
	}()
	d, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	acc := <-ch
	if err != nil || acc.err != nil {
		tb.Fatalf("tcp pair: dial %v, accept %v", err, acc.err)
	}
	tb.Cleanup(func() { d.Close(); acc.c.Close() })
	return d, acc.c
}

// world is client <-> a [Run] b <-> backend.
type world struct {
	client, a, b, backend net.Conn
}

// testDeadline bounds every wait of the test's own ends of a world, so a
// broken Run fails the test instead of hanging it.
const testDeadline = time.Minute

func tcpWorld(tb testing.TB) world {
	tb.Helper()
	client, a := tcpPair(tb)
	b, backend := tcpPair(tb)
	client.SetDeadline(time.Now().Add(testDeadline))
	backend.SetDeadline(time.Now().Add(testDeadline))
	return world{client, a, b, backend}
}

func pipeWorld(tb testing.TB) world {
	tb.Helper()
	client, a := net.Pipe()
	b, backend := net.Pipe()
	tb.Cleanup(func() {
		for _, c := range []net.Conn{client, a, b, backend} {
			c.Close()
		}
	})
	client.SetDeadline(time.Now().Add(testDeadline))
	backend.SetDeadline(time.Now().Add(testDeadline))
	return world{client, a, b, backend}
}

type result struct {
	aToB, bToA int64
	err        error
	elapsed    time.Duration
}

// running is a Run in progress.
type running struct {
	done chan struct{}
	res  result // written before done is closed
}

// start runs Run(w.a, w.b, Options{Idle: idle}) in a goroutine. Cleanup closes every conn
// of w and waits for Run to return.
func start(tb testing.TB, w world, idle time.Duration) *running {
	tb.Helper()
	r := &running{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		t0 := time.Now()
		r.res.aToB, r.res.bToA, r.res.err = Run(w.a, w.b, Options{Idle: idle})
		r.res.elapsed = time.Since(t0)
	}()
	tb.Cleanup(func() {
		for _, c := range []net.Conn{w.client, w.a, w.b, w.backend} {
			c.Close()
		}
		<-r.done
	})
	return r
}

// wait returns Run's result, failing the test if Run takes longer than d.
func (r *running) wait(tb testing.TB, d time.Duration) result {
	tb.Helper()
	select {
	case <-r.done:
		return r.res
	case <-time.After(d):
		tb.Fatalf("Run did not return within %v", d)
		return result{}
	}
}

func (r *running) returned() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

func closeWrite(tb testing.TB, c net.Conn) {
	tb.Helper()
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		tb.Errorf("CloseWrite: %v", err)
	}
}

// side sends n pseudo-random bytes (seeded by seed) on c, then half-closes
// it, while reading c to EOF. It returns the SHA-256 of what it sent and of
// what it received, and the number of bytes received.
type side struct {
	sent, got [32]byte
	gotN      int64
	err       error
}

func runSide(c net.Conn, n int64, seed uint64) *side {
	s := &side{}
	var wg sync.WaitGroup
	var werr error
	wg.Go(func() {
		h := sha256.New()
		src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{byte(seed)}), n), h)
		if _, werr = io.Copy(struct{ io.Writer }{c}, src); werr == nil {
			werr = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		copy(s.sent[:], h.Sum(nil))
	})
	h := sha256.New()
	s.gotN, s.err = io.Copy(h, struct{ io.Reader }{c})
	copy(s.got[:], h.Sum(nil))
	wg.Wait()
	s.err = errors.Join(s.err, werr)
	return s
}

func TestRunCopiesBothWaysExactly(t *testing.T) {
	tests := []struct {
		name       string
		aToB, bToA int64
		idle       time.Duration
	}{
		{"nothing", 0, 0, 0},
		{"one byte a to b", 1, 0, 0},
		{"one byte b to a", 0, 1, 0},
		{"around a buffer", bufSize - 1, bufSize + 1, 0},
		{"one buffer each", bufSize, bufSize, 0},
		{"uneven", 1<<20 + 7, 3, 0},
		{"8 MiB each way", 8 << 20, 8 << 20, 0},
		{"8 MiB each way with idle limit", 8 << 20, 8 << 20, 10 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := tcpWorld(t)
			r := start(t, w, tt.idle)
			var client, backend *side
			var wg sync.WaitGroup
			wg.Go(func() { client = runSide(w.client, tt.aToB, 1) })
			wg.Go(func() { backend = runSide(w.backend, tt.bToA, 2) })
			wg.Wait()
			res := r.wait(t, 30*time.Second)

			if client.err != nil || backend.err != nil {
				t.Fatalf("client side: %v; backend side: %v", client.err, backend.err)
			}
			if res.err != nil {
				t.Errorf("Run error: %v", res.err)
			}
			if res.aToB != tt.aToB || res.bToA != tt.bToA {
				t.Errorf("Run counted %d a->b, %d b->a; want %d, %d", res.aToB, res.bToA, tt.aToB, tt.bToA)
			}
			if backend.gotN != tt.aToB || backend.got != client.sent {
				t.Errorf("backend got %d bytes, sha256 %x; client sent %d, sha256 %x", backend.gotN, backend.got, tt.aToB, client.sent)
			}
			if client.gotN != tt.bToA || client.got != backend.sent {
				t.Errorf("client got %d bytes, sha256 %x; backend sent %d, sha256 %x", client.gotN, client.got, tt.bToA, backend.sent)
			}
		})
	}
}

// noCloseWrite hides the CloseWrite of the conn it wraps.
type noCloseWrite struct{ net.Conn }

func TestRunHalfClose(t *testing.T) {
	request := []byte("all of the request")
	answer := bytes.Repeat([]byte("answer sent only after EOF "), 40_000)

	w := tcpWorld(t)
	r := start(t, w, 0)
	if _, err := w.client.Write(request); err != nil {
		t.Fatal(err)
	}
	closeWrite(t, w.client)

	// The backend answers only once it has seen EOF: the half-close must
	// cross, and the answer must still flow back.
	got, err := io.ReadAll(w.backend)
	if err != nil || !bytes.Equal(got, request) {
		t.Fatalf("backend read %q, %v; want %q then EOF", got, err, request)
	}
	if _, err := w.backend.Write(answer); err != nil {
		t.Fatal(err)
	}
	closeWrite(t, w.backend)

	got, err = io.ReadAll(w.client)
	if err != nil || !bytes.Equal(got, answer) {
		t.Fatalf("client read %d bytes, %v; want the %d-byte answer then EOF", len(got), err, len(answer))
	}
	res := r.wait(t, 5*time.Second)
	if res.err != nil || res.aToB != int64(len(request)) || res.bToA != int64(len(answer)) {
		t.Errorf("Run = %d, %d, %v; want %d, %d, nil", res.aToB, res.bToA, res.err, len(request), len(answer))
	}
}

func TestRunWithoutCloseWriteKeepsOtherDirection(t *testing.T) {
	w := tcpWorld(t)
	w.b = noCloseWrite{w.b}
	r := start(t, w, 0)

	if _, err := w.client.Write([]byte("req")); err != nil {
		t.Fatal(err)
	}
	closeWrite(t, w.client)
	buf := make([]byte, 3)
	if _, err := io.ReadFull(w.backend, buf); err != nil {
		t.Fatal(err)
	}
	// b cannot be half-closed, so the backend sees no EOF yet.
	w.backend.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := w.backend.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("backend read after the client's half-close = %d, %v; want a timeout (no EOF)", n, err)
	}
	w.backend.SetReadDeadline(time.Now().Add(testDeadline))

	if _, err := w.backend.Write([]byte("late answer")); err != nil {
		t.Fatal(err)
	}
	closeWrite(t, w.backend)
	got, err := io.ReadAll(w.client)
	if err != nil || string(got) != "late answer" {
		t.Fatalf("client read %q, %v; want %q", got, err, "late answer")
	}
	res := r.wait(t, 5*time.Second)
	if res.err != nil || res.aToB != 3 || res.bToA != 11 {
		t.Errorf("Run = %d, %d, %v; want 3, 11, nil", res.aToB, res.bToA, res.err)
	}
	if _, err := w.backend.Read(buf); err != io.EOF {
		t.Errorf("backend read after Run = %v, want EOF (b closed)", err)
	}
}

// reset aborts a TCP connection: the peer sees ECONNRESET.
func reset(tb testing.TB, c net.Conn) {
	tb.Helper()
	if err := c.(*net.TCPConn).SetLinger(0); err != nil {
		tb.Fatal(err)
	}
	c.Close()
}

// wrapped hides a conn's methods except net.Conn's and NetConn, as
// tls.Conn and our listeners' conns do.
type wrapped struct{ net.Conn }

func (w wrapped) NetConn() net.Conn { return w.Conn }

// An abortive close at one end reaches the other end as a reset, not as a
// clean EOF, also through a wrapper that only offers NetConn.
func TestRunResetReachesOtherEnd(t *testing.T) {
	tests := []struct {
		name  string
		wrap  bool
		reset func(world) net.Conn // resets one side, returns the other
	}{
		{"client resets", false, func(w world) net.Conn { reset(t, w.client); return w.backend }},
		{"backend resets", false, func(w world) net.Conn { reset(t, w.backend); return w.client }},
		{"client resets, wrapped conns", true, func(w world) net.Conn { reset(t, w.client); return w.backend }},
		{"backend resets, wrapped conns", true, func(w world) net.Conn { reset(t, w.backend); return w.client }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := tcpWorld(t)
			if tt.wrap {
				w.a, w.b = wrapped{w.a}, wrapped{w.b}
			}
			r := start(t, w, 0)
			// Move some bytes first so both directions are in their loops.
			if _, err := w.client.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(w.backend, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			other := tt.reset(w)
			// Nobody writes on the other side: only Run ends that
			// direction.
			res := r.wait(t, 5*time.Second)
			if !errors.Is(res.err, syscall.ECONNRESET) {
				t.Errorf("Run error = %v, want ECONNRESET", res.err)
			}
			other.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := other.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("other side read = %v, want ECONNRESET (Run reset its conn)", err)
			}
		})
	}
}

func TestRunCallerCloseIsNotAnError(t *testing.T) {
	w := tcpWorld(t)
	r := start(t, w, 0)
	w.a.Close() // as a shutdown would
	res := r.wait(t, 5*time.Second)
	if res.err != nil {
		t.Errorf("Run after the caller closed a = %v, want nil", res.err)
	}
}

func TestRunIdleTimeout(t *testing.T) {
	const idle = 100 * time.Millisecond
	tests := []struct {
		name  string
		world func(testing.TB) world
	}{
		{"net.Pipe", pipeWorld},
		{"tcp", tcpWorld},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := tt.world(t)
			r := start(t, w, idle)
			res := r.wait(t, 5*time.Second)
			if !errors.Is(res.err, ErrIdle) {
				t.Fatalf("Run error = %v, want ErrIdle", res.err)
			}
			if res.elapsed < idle {
				t.Errorf("idle timeout after %v, before the %v limit", res.elapsed, idle)
			}
		})
	}
}

func TestRunIdleNotWhileOneDirectionBusy(t *testing.T) {
	const (
		idle  = 250 * time.Millisecond
		busy  = 4 * idle
		chunk = 512
	)
	tests := []struct {
		name   string
		aToB   bool // which direction is busy
		writer func(world) net.Conn
		reader func(world) net.Conn
	}{
		{"a to b busy", true, func(w world) net.Conn { return w.client }, func(w world) net.Conn { return w.backend }},
		{"b to a busy", false, func(w world) net.Conn { return w.backend }, func(w world) net.Conn { return w.client }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := pipeWorld(t)
			r := start(t, w, idle)
			var wg sync.WaitGroup
			wg.Go(func() { io.Copy(io.Discard, tt.reader(w)) })
			t.Cleanup(func() { tt.reader(w).Close(); wg.Wait() })

			// Traffic in one direction only, a chunk every idle/10, for 4 idle
			// periods. The quiet direction must not time out meanwhile.
			var sent int64
			tick := time.NewTicker(idle / 10)
			defer tick.Stop()
			for end := time.Now().Add(busy); time.Now().Before(end); <-tick.C {
				n, err := tt.writer(w).Write(make([]byte, chunk))
				sent += int64(n)
				if err != nil {
					if r.returned() {
						t.Fatalf("write while busy: %v; Run returned %v", err, r.res.err)
					}
					t.Fatalf("write while busy: %v", err)
				}
			}
			if r.returned() {
				t.Fatalf("Run returned while one direction was busy: %v", r.res.err)
			}
			res := r.wait(t, 5*time.Second) // now nothing moves
			if !errors.Is(res.err, ErrIdle) {
				t.Errorf("Run error after traffic stopped = %v, want ErrIdle", res.err)
			}
			got := res.bToA
			if tt.aToB {
				got = res.aToB
			}
			if got != sent {
				t.Errorf("Run counted %d bytes in the busy direction, want %d", got, sent)
			}
		})
	}
}

func TestRunIdleStalledWrite(t *testing.T) {
	// b->a has ended (the backend half-closed) and the backend reads nothing:
	// Run's writes to b stall. Only a write deadline can notice.
	const idle = 100 * time.Millisecond
	w := tcpWorld(t)
	r := start(t, w, idle)
	closeWrite(t, w.backend)
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 1<<20)
		for {
			if _, err := w.client.Write(buf); err != nil {
				return // Run closed a
			}
		}
	})
	t.Cleanup(func() { w.client.Close(); wg.Wait() })
	res := r.wait(t, 10*time.Second)
	if !errors.Is(res.err, ErrIdle) {
		t.Errorf("Run error = %v, want ErrIdle", res.err)
	}
}

// shortWriter writes at most half of each buffer and reports no error.
type shortWriter struct{ net.Conn }

func (c shortWriter) Write(p []byte) (int, error) {
	return c.Conn.Write(p[:(len(p)+1)/2])
}

func TestRunShortWrite(t *testing.T) {
	for _, idle := range []time.Duration{0, time.Minute} {
		t.Run(idle.String(), func(t *testing.T) {
			w := tcpWorld(t)
			w.b = shortWriter{w.b}
			r := start(t, w, idle)
			if _, err := w.client.Write([]byte("0123456789")); err != nil {
				t.Fatal(err)
			}
			res := r.wait(t, 5*time.Second)
			if !errors.Is(res.err, io.ErrShortWrite) {
				t.Errorf("Run error = %v, want io.ErrShortWrite", res.err)
			}
			if res.aToB != 5 {
				t.Errorf("Run counted %d bytes a->b, want the 5 written", res.aToB)
			}
		})
	}
}

func BenchmarkRun(b *testing.B) {
	const size = 64 << 20
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		w := tcpWorld(b)
		b.StartTimer()
		r := start(b, w, 0)
		var wg sync.WaitGroup
		wg.Go(func() {
			io.Copy(struct{ io.Writer }{w.client}, io.LimitReader(zeros{}, size))
			closeWrite(b, w.client)
		})
		n, err := io.Copy(io.Discard, struct{ io.Reader }{w.backend})
		if err != nil || n != size {
			b.Fatalf("backend got %d bytes, %v", n, err)
		}
		closeWrite(b, w.backend)
		wg.Wait()
		if res := r.wait(b, time.Minute); res.err != nil {
			b.Fatal(res.err)
		}
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestRunCountsLive: Options.Count shows the bytes written while the copy
// still runs (the admin status reads it), and ends equal to Run's counts.
func TestRunCountsLive(t *testing.T) {
	w := tcpWorld(t)
	var ctr Counters
	done := make(chan [2]int64, 1)
	go func() {
		ab, ba, _ := Run(w.a, w.b, Options{Count: &ctr})
		done <- [2]int64{ab, ba}
	}()
	t.Cleanup(func() {
		for _, c := range []net.Conn{w.client, w.a, w.b, w.backend} {
			c.Close()
		}
	})
	const n = 300 << 10
	go io.Copy(io.Discard, w.backend)
	if _, err := w.client.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.backend.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for ctr.AToB.Load() < n || ctr.BToA.Load() < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("live counts %d, %d; want %d, 4 while the copy runs", ctr.AToB.Load(), ctr.BToA.Load(), n)
		}
		time.Sleep(5 * time.Millisecond) // poll interval
	}
	select {
	case <-done:
		t.Fatal("Run returned before both sides closed")
	default:
	}
	w.client.(*net.TCPConn).CloseWrite()
	w.backend.(*net.TCPConn).CloseWrite()
	got := <-done
	if got[0] != ctr.AToB.Load() || got[1] != ctr.BToA.Load() {
		t.Errorf("Run returned %v, counters %d, %d", got, ctr.AToB.Load(), ctr.BToA.Load())
	}
}
