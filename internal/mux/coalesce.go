package mux

import (
	"encoding/binary"
	"net"
	"sync"

	"github.com/hashicorp/yamux"
)

// yamux frame layout (hashicorp/yamux spec.md): version, type, flags (2),
// stream ID (4), length (4). For a data frame the length is the size of the
// body that follows; for every other type it is a value and no body follows.
const (
	headerSize   = 12
	typeData     = 0
	protoVersion = 0
)

// firstChunk is how much of a body goes out in the same Write as its header:
// the largest TLS record payload, so header and body start share one record
// and the rest of the body still goes to the TLS layer without a copy.
const firstChunk = 16<<10 - headerSize

// Server starts a yamux server session on conn, through a coalescing writer
// (see Client). The session owns conn and closes it with the session.
func Server(conn net.Conn, cfg *yamux.Config) (*yamux.Session, error) {
	return yamux.Server(&coalescer{Conn: conn, t: transportOf(conn)}, cfg)
}

// Client starts a yamux client session on conn. yamux writes each data frame
// as two Writes, header then body, which over TLS are two records and two
// syscalls; the session here writes a data frame's header together with the
// start of its body in one Write. Frames without a body (window updates,
// pings, GoAway) are written at once, so nothing waits for a later write.
// If conn is a TLS connection over a Transport (found through NetConn
// methods), the TLS records of each frame also leave in one write. The
// session owns conn and closes it with the session.
func Client(conn net.Conn, cfg *yamux.Config) (*yamux.Session, error) {
	return yamux.Client(&coalescer{Conn: conn, t: transportOf(conn)}, cfg)
}

// coalescer holds back the header of a yamux data frame until its body is
// written, then writes both in one call. yamux v0.1.2 writes from its one
// send goroutine and always follows a data header whose length is non-zero
// with that body (on a write timeout it copies the body rather than drop it),
// so a held header never waits for anything but its own body.
type coalescer struct {
	net.Conn
	t *Transport // under Conn's TLS, or nil

	mu   sync.Mutex // serialises Write; yamux has one writer, this keeps it safe for others
	held bool       // buf[:headerSize] is a data header whose body comes next; guarded by mu
	buf  []byte     // header + first chunk of the body; guarded by mu
}

// Write passes frames through to the underlying conn, except that a data
// frame header is held and sent with the next Write (its body). It reports
// the held header as written at once, as the underlying Write would have.
func (c *coalescer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.held {
		if len(p) == headerSize && p[0] == protoVersion && p[1] == typeData && binary.BigEndian.Uint32(p[8:12]) > 0 {
			c.buf = append(c.buf[:0], p...)
			c.held = true
			return len(p), nil
		}
		return c.Conn.Write(p)
	}
	c.held = false
	k := min(len(p), firstChunk)
	c.buf = append(c.buf[:headerSize], p[:k]...)
	if c.t == nil || k == len(p) { // nothing to gather, or one TLS record at most
		if _, err := c.Conn.Write(c.buf); err != nil {
			return 0, err
		}
		if k == len(p) {
			return k, nil
		}
		n, err := c.Conn.Write(p[k:])
		return k + n, err
	}
	c.t.begin()
	_, err := c.Conn.Write(c.buf)
	n := 0
	if err == nil {
		n, err = c.Conn.Write(p[k:])
	}
	if ferr := c.t.end(); err == nil {
		err = ferr
	}
	if err != nil {
		return 0, err
	}
	return k + n, nil
}
