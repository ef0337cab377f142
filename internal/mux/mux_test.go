package mux

import (
	"io"
	"net"
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
