package mux

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// CloseWrite is a half-close: the peer reads EOF, and can still answer.
func TestStreamCloseWrite(t *testing.T) {
	_, cs, ss := sessionPair(t)
	done := make(chan error, 1)
	go func() {
		st, err := ss.Accept()
		if err != nil {
			done <- err
			return
		}
		got, err := io.ReadAll(st) // until the client's FIN
		if err == nil {
			_, err = st.Write(append([]byte("answer to "), got...))
		}
		st.Close()
		done <- err
	}()
	st, err := cs.Open()
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("query"))
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(st)
	if err != nil || string(got) != "answer to query" {
		t.Fatalf("after CloseWrite read %q, %v", got, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// openPair opens a stream from cs and accepts it on ss, with some bytes
// moved so both ends are established.
func openPair(t *testing.T, cs, ss *Session) (local, remote *Stream) {
	t.Helper()
	local, err := cs.Open()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := local.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	remote, err = ss.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(remote, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	return local, remote
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(5 * time.Millisecond) // poll interval, not synchronisation
	}
}

// Reset reaches the peer as a reset on both Read and Write, and frees the
// stream on both sides at once, without a go:linkname into yamux: the
// guard writes the RST to the peer and hands one to its own yamux.
func TestStreamReset(t *testing.T) {
	_, cs, ss := sessionPair(t)
	local, remote := openPair(t, cs, ss)
	if err := local.Reset(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the resetting session still holds the stream", func() bool { return cs.NumStreams() == 0 })
	remote.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := remote.Read(make([]byte, 1)); !errors.Is(err, ErrReset) || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("peer Read after Reset = %v, want ErrReset (ECONNRESET)", err)
	}
	if _, err := remote.Write([]byte("y")); !errors.Is(err, ErrReset) {
		t.Errorf("peer Write after Reset = %v, want ErrReset", err)
	}
	waitFor(t, 5*time.Second, "the peer session still holds the stream", func() bool { return ss.NumStreams() == 0 })
	if _, err := local.Write([]byte("z")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write on a reset stream = %v, want net.ErrClosed", err)
	}
	// The sessions carry on.
	a, b := openPair(t, cs, ss)
	a.Close()
	b.Close()
}

// A Reset wakes a Read that is blocked on the stream at once, on an idle
// session: the RST for yamux does not wait for the peer's next frame.
func TestStreamResetWakesBlockedRead(t *testing.T) {
	_, cs, ss := sessionPair(t)
	_, remote := openPair(t, cs, ss)
	errc := make(chan error, 1)
	go func() {
		_, err := remote.Read(make([]byte, 1))
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond) // let the Read block; the assertion below does not depend on it
	began := time.Now()
	remote.Reset()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("blocked Read after Reset = %v, want net.ErrClosed", err)
		}
		t.Logf("blocked Read returned %v after Reset", time.Since(began))
	case <-time.After(5 * time.Second):
		t.Fatal("a Read blocked on a reset stream did not return within 5 s")
	}
	waitFor(t, 5*time.Second, "the server session still holds the reset stream", func() bool { return ss.NumStreams() == 0 })
}

// Close lets go of the stream at once: yamux holds it no more, though the
// peer has not finished it, and what the peer sends afterwards is not
// buffered. A peer that goes on writing until its window is used up is
// reset, as TCP resets a peer writing into a closed socket.
func TestStreamCloseLetsGo(t *testing.T) {
	_, cs, ss := sessionPair(t)
	local, remote := openPair(t, cs, ss)
	if err := remote.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the closing session still holds the stream", func() bool { return ss.NumStreams() == 0 })
	if _, err := remote.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close = %v, want net.ErrClosed", err)
	}
	// The client reads the FIN, then writes more than its window.
	local.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := local.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("peer Read after Close = %v, want io.EOF", err)
	}
	held := ss.Budget().Held()
	buf := make([]byte, 64<<10)
	var err error
	for range 64 { // 4 MiB, far past the 256 KiB window
		if _, err = local.Write(buf); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrReset) {
		t.Fatalf("writing into a closed stream ended with %v, want ErrReset", err)
	}
	if now := ss.Budget().Held(); now > held {
		t.Errorf("the server holds %d bytes after the peer wrote into a closed stream, %d before", now, held)
	}
}

// A stream cut by its session's end reads as a reset, not as a clean EOF;
// a FIN still reads as EOF.
func TestStreamSessionLossIsReset(t *testing.T) {
	_, cs, ss := sessionPair(t)
	finLocal, finRemote := openPair(t, cs, ss)
	if err := finLocal.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	finRemote.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := finRemote.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("Read after the peer's FIN = %v, want io.EOF", err)
	}

	_, remote := openPair(t, cs, ss)
	cs.Close()
	remote.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := remote.Read(make([]byte, 1)); !errors.Is(err, ErrReset) {
		t.Fatalf("Read after the session closed = %v, want ErrReset", err)
	}
	if _, err := remote.Write([]byte("y")); !errors.Is(err, ErrReset) {
		t.Errorf("Write after the session closed = %v, want ErrReset", err)
	}
}

// Close from another goroutine ends a Read and a Write waiting on the
// stream, as it does a TCP socket's: they return net.ErrClosed, without
// waiting for the peer.
func TestStreamCloseWakesWaiters(t *testing.T) {
	_, cs, ss := sessionPair(t)
	local, _ := openPair(t, cs, ss)
	done := make(chan error, 1)
	go func() {
		_, err := local.Read(make([]byte, 1)) // nothing comes
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // let the Read wait; not synchronisation: the check holds either way
	local.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("a Read waiting when the stream was closed returned %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a Read waiting on a stream still waits 5s after Close")
	}
}

// A sink takes a stream's bytes on the session's reader as they arrive:
// everything while it takes everything, with Lend never woken; what it
// declines waits for Lend, in order; the FIN reaches Lend as io.EOF once
// the bytes before it are out; and a nil sink gives the bytes back to Lend.
func TestStreamSink(t *testing.T) {
	_, cs, ss := sessionPair(t)
	st, err := cs.Open()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	peer, err := ss.Accept()
	if err != nil {
		t.Fatal(err)
	}
	b, err := peer.Lend(100)
	if err != nil || string(b) != "hello" {
		t.Fatalf("first Lend: %q, %v", b, err)
	}
	peer.Return(len(b))

	var mu sync.Mutex
	var sunk []byte
	take := 1 << 30 // bytes the sink takes before it declines the rest
	peer.SetSink(func(p []byte) int {
		mu.Lock()
		defer mu.Unlock()
		n := min(len(p), take)
		take -= n
		sunk = append(sunk, p[:n]...)
		return n
	})
	got := func() string {
		mu.Lock()
		defer mu.Unlock()
		return string(sunk)
	}
	st.Write([]byte("sunk one "))
	st.Write([]byte("sunk two"))
	waitFor(t, 5*time.Second, "the sink to take both writes", func() bool { return got() == "sunk one sunk two" })
	peer.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if b, err := peer.Lend(100); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Lend after the sink took everything: %q, %v; want a timeout", b, err)
	}
	peer.SetReadDeadline(time.Time{})

	mu.Lock()
	take = 3
	mu.Unlock()
	st.Write([]byte("abcdefgh"))
	st.CloseWrite()
	var rest []byte
	for {
		b, err := peer.Lend(100)
		rest = append(rest, b...)
		if len(b) > 0 {
			peer.Return(len(b))
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if got() != "sunk one sunk twoabc" || string(rest) != "defgh" {
		t.Errorf("sink took %q and Lend got %q; want the first 3 bytes sunk, the rest lent, then EOF", got(), rest)
	}

	// Without a sink, Lend gets everything again.
	st2, err := cs.Open()
	if err != nil {
		t.Fatal(err)
	}
	peer2, err := ss.Accept()
	if err != nil {
		t.Fatal(err)
	}
	peer2.SetSink(func(p []byte) int { t.Error("a removed sink was called"); return 0 })
	peer2.SetSink(nil)
	st2.Write([]byte("x"))
	if b, err := peer2.Lend(10); err != nil || string(b) != "x" {
		t.Errorf("Lend with the sink removed: %q, %v", b, err)
	}
}
