package mux

import (
	"bufio"
	"net"
	"sync"
)

// Sizes of a Transport's buffers: a read fetches up to four full TLS
// records at once; a write batch is at most one yamux frame's records
// (the copy loop writes 64 KiB at a time), capped for safety.
const (
	transportReadBuf  = 64 << 10
	transportMaxBatch = 512 << 10
)

// Transport is the TCP connection under a session's TLS connection:
// tls.Server(NewTransport(c), cfg). crypto/tls makes one Read per record
// header and body and one Write per record (16 KiB at most), each a
// syscall. A Transport reads through a buffer, so one syscall fetches
// several records, and while a Server or Client session writes a frame it
// gathers the frame's records and sends them in one Write. Outside a frame
// (the handshake, alerts, a raw-TLS stream) writes go straight through.
// Deadlines, Close and addresses are the wrapped conn's.
type Transport struct {
	net.Conn

	r *bufio.Reader // created by the first Read; crypto/tls reads from one goroutine at a time

	mu       sync.Mutex
	batching bool   // a frame is being written: gather; guarded by mu
	out      []byte // the gathered records; guarded by mu
}

// NewTransport wraps c, the TCP connection a TLS connection will use.
func NewTransport(c net.Conn) *Transport { return &Transport{Conn: c} }

// Read reads from the connection through a 64 KiB buffer.
func (t *Transport) Read(p []byte) (int, error) {
	if t.r == nil {
		t.r = bufio.NewReaderSize(t.Conn, transportReadBuf)
	}
	return t.r.Read(p)
}

// Write writes p, or while a frame is being written, keeps it for the
// frame's single write.
func (t *Transport) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.batching {
		return t.Conn.Write(p)
	}
	t.out = append(t.out, p...)
	if len(t.out) >= transportMaxBatch {
		if err := t.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// NetConn returns the wrapped connection, so that an abortive close
// (internal/pipe) reaches the socket under the TLS connection.
func (t *Transport) NetConn() net.Conn { return t.Conn }

// CloseWrite half-closes the TCP connection, if it can.
func (t *Transport) CloseWrite() error {
	if cw, ok := t.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// begin starts gathering writes.
func (t *Transport) begin() {
	t.mu.Lock()
	t.batching = true
	t.mu.Unlock()
}

// end stops gathering and writes what was gathered in one call.
func (t *Transport) end() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.batching = false
	return t.flushLocked()
}

func (t *Transport) flushLocked() error {
	if len(t.out) == 0 {
		return nil
	}
	_, err := t.Conn.Write(t.out)
	if cap(t.out) > transportMaxBatch {
		t.out = nil // don't keep an outsized buffer for an idle session
	} else {
		t.out = t.out[:0]
	}
	return err
}

// transportOf finds the Transport under conn: conn itself, or below any
// number of wrappers that expose NetConn (as *tls.Conn does).
func transportOf(conn net.Conn) *Transport {
	for range 8 {
		switch c := conn.(type) {
		case *Transport:
			return c
		case interface{ NetConn() net.Conn }:
			conn = c.NetConn()
		default:
			return nil
		}
	}
	return nil
}
