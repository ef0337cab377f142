package mux

import (
	"bytes"
	"net"
	"sync"
	"testing"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

func testLog() *logrus.Entry {
	logger, _ := logtest.NewNullLogger()
	return logrus.NewEntry(logger)
}

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
// a Server session that admits 64 streams, with opts applied to the
// server's Options; both are closed at cleanup.
func sessionPair(t *testing.T, opts ...func(*Options)) (*countConn, *Session, *Session) {
	t.Helper()
	raw, sc := tcpConns(t)
	cc := &countConn{Conn: raw}
	cs, err := Client(cc, Options{Log: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	so := Options{Log: testLog(), MaxStreams: 64}
	for _, o := range opts {
		o(&so)
	}
	ss, err := Server(sc, so)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close(); ss.Close() })
	return cc, cs, ss
}
