package mux

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// windowOf returns the receive window the guard keeps for stream id.
func windowOf(s *Session, id uint32) uint32 {
	s.g.mu.Lock()
	defer s.g.mu.Unlock()
	if st := s.g.streams[id]; st != nil {
		return st.window
	}
	return 0
}

// transfer sends n bytes on a new stream from cs, which ss's side reads
// with read, and returns the server stream's window at the end.
func transfer(t *testing.T, cs, ss *Session, n int64, read func(*Stream) error) uint32 {
	t.Helper()
	res := make(chan uint32, 1)
	go func() {
		st, err := ss.Accept()
		if err != nil {
			res <- 0
			return
		}
		defer st.Close()
		if err := read(st); err != nil {
			t.Error(err)
		}
		res <- windowOf(ss, st.StreamID())
	}()
	st, err := cs.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	buf := make([]byte, 64<<10)
	for sent := int64(0); sent < n; sent += int64(len(buf)) {
		if _, err := st.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	st.CloseWrite()
	select {
	case w := <-res:
		return w
	case <-time.After(60 * time.Second):
		t.Fatal("transfer did not finish within 60 s")
		return 0
	}
}

// pinRTT makes the round trip s tunes with d, whatever its pings measure
// for the rest of a short test (the minimum of the last samples counts).
func pinRTT(s *Session, d time.Duration) {
	s.g.mu.Lock()
	defer s.g.mu.Unlock()
	for i := range s.g.rtts {
		s.g.rtts[i] = d
	}
	s.g.rttNext = len(s.g.rtts)
	s.g.rtt = d
}

// The path, not the rate, sizes the window: at a loopback round trip (the
// tuner's 100 µs floor) a stream whose reader keeps up stays within 4 MiB
// however fast the copy runs here (4 × 10 GB/s × 100 µs), so a loopback or
// LAN session holds little memory, where the 16 MiB most a stream may grow
// to is for long paths; a stream whose reader is slow keeps the initial
// window, so a stalled backend costs no more than 256 KiB of the session's
// memory. The RTT is pinned: a loaded machine stretches a measured
// loopback round trip to milliseconds, and the tuner rightly follows.
func TestWindowTuning(t *testing.T) {
	_, cs, ss := sessionPair(t)
	waitFor(t, 5*time.Second, "the guard's round-trip measurement", func() bool { return ss.RTT() > 0 })
	measured := ss.RTT()
	pinRTT(ss, 50*time.Microsecond)
	const n = 64 << 20
	start := time.Now()
	fast := transfer(t, cs, ss, n, func(st *Stream) error {
		_, err := io.Copy(io.Discard, st)
		return err
	})
	rate := float64(n) / time.Since(start).Seconds()
	if fast > 4<<20 {
		t.Errorf("a reader that keeps up at a 100 µs round trip ended with a window of %d KiB, want at most 4 MiB (%.0f MB/s)", fast>>10, rate/1e6)
	}
	slow := transfer(t, cs, ss, 4<<20, func(st *Stream) error {
		buf := make([]byte, 16<<10)
		for {
			if _, err := st.Read(buf); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
			time.Sleep(2 * time.Millisecond) // 8 MB/s at most
		}
	})
	if slow != initialWindow {
		t.Errorf("a slow reader ended with a window of %d, want the initial %d", slow, initialWindow)
	}
	t.Logf("window of a fast reader %d KiB at %.0f MB/s, of a slow one %d KiB (RTT pinned at the floor; measured %v)", fast>>10, rate/1e6, slow>>10, measured)
}

// Window growth comes out of the budget: with a 2 MiB session budget the
// windows promised beyond the initial ones never pass 1 MiB, however long
// the path.
func TestWindowGrowthWithinBudget(t *testing.T) {
	b := NewBudget(2<<20, nil)
	a, c := delayedPair(t, 20*time.Millisecond)
	cs, err := Client(a, Options{Log: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	ss, err := Server(c, Options{Log: testLog(), MaxStreams: 4, Budget: b})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close(); ss.Close() })
	waitFor(t, 5*time.Second, "the guard's round-trip measurement", func() bool { return ss.RTT() > 0 })
	w := transfer(t, cs, ss, 32<<20, func(st *Stream) error {
		_, err := io.Copy(io.Discard, st)
		return err
	})
	if w > initialWindow+1<<20 {
		t.Errorf("window grew to %d with a 2 MiB budget, want at most %d", w, initialWindow+1<<20)
	}
	waitFor(t, 5*time.Second, "the promised window given back after the stream closed", func() bool { return b.grown.Load() == 0 })
}

// The guard's interrupt of a blocked read is harmless to crypto/tls: after
// many resets on an idle TLS session, bytes still arrive intact.
func TestResetsOverTLS(t *testing.T) {
	_, cs, ss := tlsSessions(t)
	for range 50 {
		local, remote := openPair(t, cs, ss)
		remote.Reset() // the server's reader is idle: the guard interrupts it
		local.Close()
	}
	payload := bytes.Repeat([]byte("0123456789"), 1<<20)
	want := sha256.Sum256(payload)
	got := make(chan [32]byte, 1)
	go func() {
		st, err := ss.Accept()
		if err != nil {
			got <- [32]byte{}
			return
		}
		defer st.Close()
		h := sha256.New()
		io.Copy(h, st)
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		got <- sum
	}()
	st, err := cs.Open()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write(payload); err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	if g := <-got; g != want {
		t.Fatal("10 MB after 50 interrupted reads arrived changed")
	}
	if err := ss.Violation(); err != nil {
		t.Fatal(err)
	}
}

// A stream the application closed before the peer finished it lingers
// (counted against the stream cap) until the peer's FIN, or is reset after
// linger.
func TestLingerReset(t *testing.T) {
	_, cs, ss := sessionPair(t)
	ss.g.mu.Lock()
	ss.g.linger = 100 * time.Millisecond
	ss.g.mu.Unlock()
	local, remote := openPair(t, cs, ss)
	remote.Close()
	local.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := local.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after the server closed = %v, want EOF", err)
	}
	// The client neither writes nor closes: after linger the guard resets it.
	waitFor(t, 5*time.Second, "the lingering stream reset", func() bool {
		_, err := local.Read(make([]byte, 1))
		return errors.Is(err, ErrReset)
	})
	ss.g.mu.Lock()
	n := len(ss.g.streams)
	ss.g.mu.Unlock()
	if n != 0 {
		t.Errorf("the guard still tracks %d streams", n)
	}
}

// delayedPair returns two connected conns whose bytes each arrive delay
// after they were written, in order: a long path in a test.
func delayedPair(t *testing.T, delay time.Duration) (net.Conn, net.Conn) {
	t.Helper()
	a, pa := tcpConns(t)
	pb, b := tcpConns(t)
	forward := func(from, to net.Conn) {
		type chunk struct {
			at time.Time
			b  []byte
		}
		q := make(chan chunk, 4096)
		go func() {
			defer close(q)
			for {
				buf := make([]byte, 64<<10)
				n, err := from.Read(buf)
				if n > 0 {
					q <- chunk{time.Now().Add(delay), buf[:n]}
				}
				if err != nil {
					return
				}
			}
		}()
		go func() {
			for c := range q {
				time.Sleep(time.Until(c.at))
				if _, err := to.Write(c.b); err != nil {
					return
				}
			}
			to.Close()
		}()
	}
	forward(pa, pb)
	forward(pb, pa)
	return a, b
}

// Over a 40 ms round trip the window grows past what the path needs at
// its rate, where the initial 256 KiB would cap the stream near 6 MB/s.
func TestWindowGrowsOnALongPath(t *testing.T) {
	a, b := delayedPair(t, 20*time.Millisecond)
	cs, err := Client(a, Options{Log: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	ss, err := Server(b, Options{Log: testLog(), MaxStreams: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close(); ss.Close() })
	waitFor(t, 5*time.Second, "the guard's round-trip measurement", func() bool { return ss.RTT() > 0 })
	began := time.Now()
	w := transfer(t, cs, ss, 48<<20, func(st *Stream) error {
		_, err := io.Copy(io.Discard, st)
		return err
	})
	el := time.Since(began)
	t.Logf("48 MiB over a %v round trip in %v (%.0f MB/s); window %d KiB", ss.RTT(), el, 48<<20/el.Seconds()/1e6, w>>10)
	if w < 1<<20 {
		t.Errorf("window %d KiB on a 40 ms path: it did not grow", w>>10)
	}
}

// tuneLocked, given a round trip: a reader that takes 1 GB/s on a loopback
// path stays under 512 KiB, one that is window-limited on a 40 ms path
// (with credit going back a quarter window at a time it takes about three
// quarters of its window a round trip) grows threefold an epoch up to the
// ceiling, and a slow reader never grows.
func TestTuneLocked(t *testing.T) {
	tests := []struct {
		name   string
		rtt    time.Duration
		every  time.Duration // the reader takes perRead bytes this often
		read   uint64
		epochs int
		lo, hi uint32 // the window it ends with
	}{
		{"loopback, 1 GB/s", 60 * time.Microsecond, tuneEpoch, 2 << 20, 10, initialWindow, 512 << 10},
		{"long path, window-limited", 40 * time.Millisecond, 40 * time.Millisecond, 0, 4, 16 << 20, 16 << 20},
		{"long path, slow reader", 40 * time.Millisecond, 40 * time.Millisecond, 16 << 10, 10, initialWindow, initialWindow},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opt, _ := Options{Log: testLog()}.withDefaults()
			g := newGuard(&recordConn{}, opt, true)
			g.rtt = tt.rtt
			st := newGStream(false)
			now := time.Now()
			st.epochAt, st.tuned = now.Add(-tt.every), false
			for range tt.epochs {
				read := tt.read
				if read == 0 {
					read = uint64(st.window) / 4 * 3 // window-limited
				}
				st.consumed += read
				st.epochAt = time.Now().Add(-tt.every)
				st.epochFrom = st.consumed - read
				g.tuneLocked(st)
			}
			if st.window < tt.lo || st.window > tt.hi {
				t.Errorf("window after %d epochs = %d KiB, want %d to %d KiB", tt.epochs, st.window>>10, tt.lo>>10, tt.hi>>10)
			}
		})
	}
}
