package pipe

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// Thousands of idle connections must not each pin two large copy buffers:
// a direction waits on a small buffer unless reads keep filling it.
func TestRunIdleHoldsOnlySmallBuffers(t *testing.T) {
	const pipes = 300
	heap := func() uint64 {
		runtime.GC()
		runtime.GC() // and the sync.Pool victim cache
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	worlds := make([]world, pipes)
	for i := range worlds {
		worlds[i] = tcpWorld(t)
	}
	before := heap()
	for _, w := range worlds {
		start(t, w, 0)
		// One byte each way, so both directions have read once and wait again.
		if _, err := w.client.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(w.backend, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		if _, err := w.backend.Write([]byte{2}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(w.client, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}
	// Each Run's directions are blocked in Read now; what they hold is live.
	perPipe := (int64(heap()) - int64(before)) / pipes
	// Two large buffers would be 2*bufSize = 256 KiB; two small ones plus the
	// pipe's own state are a few KiB.
	if perPipe > 16<<10 {
		t.Errorf("an idle Run holds %d bytes of heap, want at most 16 KiB (2 x %d-byte buffers)", perPipe, smallSize)
	}
	t.Logf("heap per idle Run: %d bytes", perPipe)
}

// A bulk transfer moves to the large buffer and back: bytes stay exact when
// reads alternate between full and short ones.
func TestRunSwitchesBuffersExactly(t *testing.T) {
	w := tcpWorld(t)
	r := start(t, w, 0)
	done := make(chan *side, 1)
	go func() { done <- runSide(w.backend, 0, 9) }()
	var sent []byte
	for i, size := range []int{1, smallSize, smallSize + 1, bufSize, 3, 5 * bufSize, 7, smallSize - 1} {
		chunk := make([]byte, size)
		for j := range chunk {
			chunk[j] = byte(i*31 + j)
		}
		sent = append(sent, chunk...)
		if _, err := w.client.Write(chunk); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond) // let reads see the chunks separately; not synchronisation
	}
	closeWrite(t, w.client)
	got, err := io.ReadAll(w.client)
	if err != nil || len(got) != 0 {
		t.Fatalf("client read %d bytes, %v", len(got), err)
	}
	b := <-done
	res := r.wait(t, 10*time.Second)
	if b.err != nil || res.err != nil {
		t.Fatalf("backend: %v; Run: %v", b.err, res.err)
	}
	if b.gotN != int64(len(sent)) || b.got != sha256.Sum256(sent) {
		t.Errorf("backend got %d bytes, want %d, sha256 equal %v", b.gotN, len(sent), b.got == sha256.Sum256(sent))
	}
}

// recordWrites records the size of every Write to the conn it wraps and
// keeps its CloseWrite.
type recordWrites struct {
	*net.TCPConn
	mu    sync.Mutex
	sizes []int // guarded by mu
}

func (c *recordWrites) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.sizes = append(c.sizes, len(p))
	c.mu.Unlock()
	return c.TCPConn.Write(p)
}

func (c *recordWrites) writes() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.sizes)
}

// yamuxStream gives a yamux stream the net.Conn methods it lacks.
type yamuxStream struct{ *yamux.Stream }

// A message a little larger than the small buffer, received at once, is
// written on in one piece (over a tunnel: one yamux frame, one TLS record),
// whether it comes from a socket or from a yamux stream.
func TestRunDoesNotSplitAMessage(t *testing.T) {
	msg := bytes.Repeat([]byte("0123456789"), 100) // 1000 bytes, about two small buffers
	if len(msg) <= smallSize || len(msg) >= 3*smallSize {
		t.Fatalf("a %d-byte message does not exercise a %d-byte small buffer", len(msg), smallSize)
	}
	tests := []struct {
		name   string
		source func(t *testing.T) (src net.Conn, send io.WriteCloser)
	}{
		{"socket", func(t *testing.T) (net.Conn, io.WriteCloser) {
			client, a := tcpPair(t)
			return a, client
		}},
		{"yamux stream", func(t *testing.T) (net.Conn, io.WriteCloser) {
			c1, c2 := net.Pipe()
			cfg := yamux.DefaultConfig()
			cfg.LogOutput = io.Discard
			cs, err := yamux.Client(c1, cfg)
			if err != nil {
				t.Fatal(err)
			}
			ss, err := yamux.Server(c2, cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cs.Close(); ss.Close() })
			out, err := cs.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := out.Write([]byte{0}); err != nil { // opens the stream on the server
				t.Fatal(err)
			}
			in, err := ss.AcceptStream()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(in, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			return yamuxStream{in}, out
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, send := tt.source(t)
			b, backend := tcpPair(t)
			rec := &recordWrites{TCPConn: b}
			done := make(chan error, 1)
			go func() { _, _, err := Run(src, rec, Options{}); done <- err }()
			// send's FIN ends Run's read of a yamux source (its Close is a
			// half-close); closing b ends the other direction.
			t.Cleanup(func() { send.Close(); src.Close(); b.Close(); <-done })

			for range 3 {
				if _, err := send.Write(msg); err != nil {
					t.Fatal(err)
				}
				backend.SetReadDeadline(time.Now().Add(10 * time.Second))
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(backend, got); err != nil || !bytes.Equal(got, msg) {
					t.Fatalf("backend read %q, %v", got, err)
				}
			}
			if w := rec.writes(); !slices.Equal(w, []int{len(msg), len(msg), len(msg)}) {
				t.Errorf("three %d-byte messages were written on as %v", len(msg), w)
			}
		})
	}
}

// countMemory is a Memory of limit bytes that records the most it lent.
type countMemory struct {
	mu         sync.Mutex
	limit, cur int64
	peak       int64
	refused    int
}

func (m *countMemory) Take(n int64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur+n > m.limit {
		m.refused++
		return false
	}
	m.cur += n
	m.peak = max(m.peak, m.cur)
	return true
}

func (m *countMemory) Free(n int64) {
	m.mu.Lock()
	m.cur -= n
	m.mu.Unlock()
}

// Large buffers come out of Options.Memory: with room for one, a bulk
// transfer both ways holds one at most, the other direction copies through
// its small buffer, the bytes arrive intact, and everything is given back.
func TestRunLargeBuffersFromMemory(t *testing.T) {
	mem := &countMemory{limit: bufSize}
	w := tcpWorld(t)
	done := make(chan error, 1)
	go func() { _, _, err := Run(w.a, w.b, Options{Memory: mem}); done <- err }()
	payload := bytes.Repeat([]byte("abcdefgh"), 1<<20) // 8 MiB each way
	var wg sync.WaitGroup
	for _, pair := range [][2]net.Conn{{w.client, w.backend}, {w.backend, w.client}} {
		from, to := pair[0], pair[1]
		wg.Go(func() {
			from.Write(payload)
			from.(*net.TCPConn).CloseWrite()
		})
		wg.Go(func() {
			to.SetReadDeadline(time.Now().Add(30 * time.Second))
			got, err := io.ReadAll(to)
			if err != nil || !bytes.Equal(got, payload) {
				t.Errorf("read %d bytes (%v), want the %d sent", len(got), err, len(payload))
			}
		})
	}
	wg.Wait()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mem.mu.Lock()
	defer mem.mu.Unlock()
	if mem.peak > bufSize || mem.cur != 0 {
		t.Errorf("Memory lent %d bytes at most and %d are still out; want at most %d, then 0", mem.peak, mem.cur, bufSize)
	}
	if mem.refused == 0 {
		t.Error("the second direction never asked for a large buffer: the test proves nothing")
	}
}

// lenderConn is a socket that lends what it reads from a buffer of its
// own, and counts what Run gave back; Run must never call its Read.
type lenderConn struct {
	*net.TCPConn
	buf      []byte
	out      int // bytes of buf lent and not given back
	returned atomic.Int64
	reads    atomic.Int64
}

func (c *lenderConn) Read(p []byte) (int, error) {
	c.reads.Add(1)
	return c.TCPConn.Read(p)
}

func (c *lenderConn) Lend(max int) ([]byte, error) {
	if c.out != 0 {
		return nil, errors.New("Lend before Return")
	}
	n, err := c.TCPConn.Read(c.buf[:min(max, len(c.buf))])
	c.out = n
	return c.buf[:n], err
}

func (c *lenderConn) Return(n int) {
	if n > c.out {
		panic("returned more than was lent")
	}
	c.returned.Add(int64(n))
	c.out = 0
}

// A Lender's bytes are written on where they are: every byte arrives, is
// given back once, and Run never reads the Lender through Read. Its idle
// limit works as for any conn.
func TestRunWritesLentBytes(t *testing.T) {
	w := tcpWorld(t)
	l := &lenderConn{TCPConn: w.a.(*net.TCPConn), buf: make([]byte, 50_000)}
	done := make(chan error, 1)
	go func() { _, _, err := Run(l, w.b, Options{Idle: 5 * time.Second}); done <- err }()
	payload := bytes.Repeat([]byte("lent bytes "), 400_000) // 4.4 MB
	go func() {
		w.client.Write(payload)
		w.client.(*net.TCPConn).CloseWrite()
	}()
	w.backend.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(w.backend)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("backend read %d bytes (%v), want the %d sent", len(got), err, len(payload))
	}
	w.backend.(*net.TCPConn).CloseWrite()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if r := l.returned.Load(); r != int64(len(payload)) {
		t.Errorf("%d bytes given back, want %d", r, len(payload))
	}
	if n := l.reads.Load(); n != 0 {
		t.Errorf("Run read the Lender %d times through Read", n)
	}
}
