package mux

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

// recordConn records every Write it is given and discards the bytes.
type recordConn struct {
	net.Conn // nil: only Write is used
	mu       sync.Mutex
	writes   [][]byte // guarded by mu
}

func (c *recordConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, bytes.Clone(p))
	c.mu.Unlock()
	return len(p), nil
}

func hdr(typ byte, length uint32) []byte {
	h := make([]byte, headerSize)
	h[1] = typ
	binary.BigEndian.PutUint32(h[4:8], 3) // stream ID
	binary.BigEndian.PutUint32(h[8:12], length)
	return h
}

func TestCoalescerWrites(t *testing.T) {
	const (
		typeWindowUpdate = 1
		typePing         = 2
		typeGoAway       = 3
	)
	big := bytes.Repeat([]byte("0123456789abcdef"), 3000) // 48000 bytes
	tests := []struct {
		name   string
		frames [][]byte // the Writes yamux makes
		want   [][]byte // the Writes the conn below sees
	}{
		{"data header and body become one write",
			[][]byte{hdr(typeData, 5), []byte("hello")},
			[][]byte{append(hdr(typeData, 5), "hello"...)}},
		{"window update goes out alone at once",
			[][]byte{hdr(typeWindowUpdate, 1<<20)},
			[][]byte{hdr(typeWindowUpdate, 1<<20)}},
		{"ping goes out alone at once",
			[][]byte{hdr(typePing, 7)},
			[][]byte{hdr(typePing, 7)}},
		{"go away goes out alone at once",
			[][]byte{hdr(typeGoAway, 0)},
			[][]byte{hdr(typeGoAway, 0)}},
		{"empty data frame (flags only) goes out at once",
			[][]byte{hdr(typeData, 0)},
			[][]byte{hdr(typeData, 0)}},
		{"large body: header shares the first record, the rest follows uncopied",
			[][]byte{hdr(typeData, uint32(len(big))), big},
			[][]byte{append(hdr(typeData, uint32(len(big))), big[:firstChunk]...), big[firstChunk:]}},
		{"frames in a row",
			[][]byte{hdr(typeWindowUpdate, 9), hdr(typeData, 2), []byte("ab"), hdr(typePing, 1), hdr(typeData, 1), []byte("c")},
			[][]byte{hdr(typeWindowUpdate, 9), append(hdr(typeData, 2), "ab"...), hdr(typePing, 1), append(hdr(typeData, 1), 'c')}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := &recordConn{}
			c := &coalescer{Conn: rc}
			for i, f := range tt.frames {
				if n, err := c.Write(f); n != len(f) || err != nil {
					t.Fatalf("Write #%d (%d bytes) = %d, %v", i, len(f), n, err)
				}
			}
			if len(rc.writes) != len(tt.want) {
				t.Fatalf("conn saw %d writes, want %d", len(rc.writes), len(tt.want))
			}
			for i := range tt.want {
				if !bytes.Equal(rc.writes[i], tt.want[i]) {
					t.Errorf("write #%d = %d bytes %x..., want %d bytes %x...", i, len(rc.writes[i]), head(rc.writes[i]), len(tt.want[i]), head(tt.want[i]))
				}
			}
		})
	}
}

func head(b []byte) []byte { return b[:min(len(b), 20)] }

// countConn counts the Writes that reach a real conn.
type countConn struct {
	net.Conn
	mu     sync.Mutex
	writes int // guarded by mu
}

func (c *countConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes++
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *countConn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes
}

// sessionPair runs a Client session over a counted loopback TCP conn against
// a Server session; both are closed at cleanup.
func sessionPair(t *testing.T) (*countConn, *yamux.Session, *yamux.Session) {
	t.Helper()
	logger, _ := logtest.NewNullLogger()
	log := logrus.NewEntry(logger)
	raw, sc := tcpConns(t)
	cc := &countConn{Conn: raw}
	cs, err := Client(cc, Config(log, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	ss, err := Server(sc, Config(log, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close(); ss.Close() })
	return cc, cs, ss
}

// Pings are header-only frames: a writer that held them back waiting for a
// body would stall the session, and Ping would never return.
func TestCoalescerDoesNotHoldHeaderOnlyFrames(t *testing.T) {
	_, cs, ss := sessionPair(t)
	for range 3 {
		for name, s := range map[string]*yamux.Session{"client": cs, "server": ss} {
			done := make(chan error, 1)
			go func() { _, err := s.Ping(); done <- err }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("%s ping: %v", name, err)
				}
			case <-time.After(10 * time.Second): // a ping on loopback takes well under a millisecond
				t.Fatalf("%s ping through the coalescing writer did not return within 10 s", name)
			}
		}
	}
}

// Each small data frame reaches the socket as one write, not two (header,
// body), and the bytes arrive intact.
func TestCoalescerOneWritePerDataFrame(t *testing.T) {
	cc, cs, ss := sessionPair(t)
	const frames = 200
	got := make(chan []byte, 1)
	go func() {
		st, err := ss.AcceptStream()
		if err != nil {
			got <- nil
			return
		}
		defer st.Close()
		st.SetReadDeadline(time.Now().Add(30 * time.Second))
		b, _ := io.ReadAll(st)
		got <- b
	}()
	st, err := cs.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	var want []byte
	before := cc.count() // the SYN (a window update) may or may not be out yet
	for i := range frames {
		msg := []byte{byte(i), 'x', 'y'}
		want = append(want, msg...)
		if _, err := st.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	mid := cc.count()
	st.Close()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("server read %d bytes, want %d", len(b), len(want))
	}
	// Stream.Write returns once its frame is written, so mid-before counts the
	// data frames' writes plus at most the SYN: one each, not two.
	if n := mid - before; n > frames+1 {
		t.Errorf("%d data frames took %d writes to the conn, want at most %d (one per frame)", frames, n, frames+1)
	}
}
