package mux

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

func TestConfig(t *testing.T) {
	logger, _ := logtest.NewNullLogger()
	log := logrus.NewEntry(logger)
	c := Config(log, 5*time.Second, 0)
	if err := yamux.VerifyConfig(c); err != nil {
		t.Fatalf("Config is not a valid yamux config: %v", err)
	}
	// yamux's close timer starts at our FIN, which is also our half-close:
	// it would cut a half-closed stream that is still receiving.
	if c.StreamCloseTimeout != 0 {
		t.Errorf("StreamCloseTimeout = %v, want 0", c.StreamCloseTimeout)
	}
	if c.MaxStreamWindowSize != Window || !c.EnableKeepAlive || c.KeepAliveInterval != 5*time.Second {
		t.Errorf("Config = %+v", c)
	}
	if c.ConnectionWriteTimeout != DefaultTimeout {
		t.Errorf("ConnectionWriteTimeout = %v, want %v", c.ConnectionWriteTimeout, DefaultTimeout)
	}
	if c := Config(log, 0, time.Second); c.EnableKeepAlive || c.ConnectionWriteTimeout != time.Second {
		t.Errorf("Config(keepalive 0, timeout 1s) = %+v", c)
	}
}

// CloseWrite is a half-close: the peer reads EOF, and can still answer.
func TestStreamCloseWrite(t *testing.T) {
	logger, _ := logtest.NewNullLogger()
	log := logrus.NewEntry(logger)
	a, b := net.Pipe()
	cs, err := yamux.Client(a, Config(log, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	ss, err := yamux.Server(b, Config(log, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	done := make(chan error, 1)
	go func() {
		st, err := ss.AcceptStream()
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
	yst, err := cs.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	st := Stream{yst}
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
func openPair(t *testing.T, cs, ss *yamux.Session) (local, remote Stream) {
	t.Helper()
	yst, err := cs.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := yst.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	rst, err := ss.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rst, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	return Stream{yst}, Stream{rst}
}

// Reset reaches the peer as a reset on both Read and Write, and frees the
// stream on both sides at once.
func TestStreamReset(t *testing.T) {
	_, cs, ss := sessionPair(t)
	local, remote := openPair(t, cs, ss)
	if err := local.Reset(); err != nil {
		t.Fatal(err)
	}
	if n := cs.NumStreams(); n != 0 {
		t.Errorf("after Reset the resetting session holds %d streams, want 0", n)
	}
	remote.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := remote.Read(make([]byte, 1)); !errors.Is(err, ErrReset) || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("peer Read after Reset = %v, want ErrReset (ECONNRESET)", err)
	}
	if _, err := remote.Write([]byte("y")); !errors.Is(err, ErrReset) {
		t.Errorf("peer Write after Reset = %v, want ErrReset", err)
	}
	if n := ss.NumStreams(); n != 0 {
		t.Errorf("after the RST the peer session holds %d streams, want 0", n)
	}
	if _, err := local.Write([]byte("z")); err == nil {
		t.Error("Write on a reset stream succeeded")
	}
	// The sessions carry on.
	a, b := openPair(t, cs, ss)
	a.Close()
	b.Close()
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
