package server

import (
	"errors"
	"io"
	"net"
)

// TLS record layer facts, as crypto/tls applies them to a server's first
// records (crypto/tls/common.go, conn.go).
const (
	recordHeaderLen     = 5
	recordTypeAlert     = 21
	recordTypeHandshake = 22
	alertLevelWarning   = 1
	alertCloseNotify    = 0
	maxRecordLen        = 16384 + 2048 // maxCiphertext
	maxHelloLen         = 65536        // maxHandshake: the largest message it reads
	maxIgnoredRecords   = 16           // maxUselessRecords: warning alerts it skips
	// maxPrologue bounds what readClientHello buffers: the largest
	// ClientHello in full records, with room for their headers.
	maxPrologue = maxHelloLen + 8<<10
)

var errHelloTooLarge = errors.New("server: ClientHello records exceed 72 KiB")

// readClientHello reads TLS records from r until they hold one whole
// handshake message (a client's ClientHello), or until crypto/tls, given
// what was read, would refuse it without reading more: a record that is
// neither handshake nor alert, a version or length it rejects on sight, an
// empty handshake record, an alert other than a warning (or a close_notify),
// more warnings than it skips, a message longer than it reads. It returns every byte read, in
// order, on error too (a timeout with none read means no first byte).
// Past maxPrologue bytes it stops with errHelloTooLarge. The buffer grows
// with the bytes that arrive, not with the lengths the records announce, so
// a peer that announces a large record and trickles it holds what it sent;
// grew is called with the buffer's size each time it is allocated, the
// first time when the first byte has come.
func readClientHello(r io.Reader, grew func(size int)) ([]byte, error) {
	var first [1]byte
	if _, err := io.ReadFull(r, first[:]); err != nil {
		return nil, err
	}
	buf := append(make([]byte, 0, 512), first[0])
	grew(cap(buf))
	var (
		err      error
		at       int     // offset of the current record's header
		msg      [4]byte // the handshake message header, as it arrives
		msgBytes int     // handshake payload bytes so far
		ignored  int     // warning alerts in a row
	)
	for {
		if buf, err = readTo(r, buf, at+recordHeaderLen, grew); err != nil {
			return buf, err
		}
		hdr := buf[at : at+recordHeaderLen]
		typ, vers, n := hdr[0], int(hdr[1])<<8|int(hdr[2]), int(hdr[3])<<8|int(hdr[4])
		if (typ != recordTypeHandshake && typ != recordTypeAlert) || vers >= 0x1000 || n > maxRecordLen ||
			(typ == recordTypeHandshake && n == 0) {
			return buf, nil // refused on sight
		}
		end := at + recordHeaderLen + n
		if end > maxPrologue {
			return buf, errHelloTooLarge
		}
		if buf, err = readTo(r, buf, end, grew); err != nil {
			return buf, err
		}
		body := buf[at+recordHeaderLen : end]
		at = end
		if typ == recordTypeAlert {
			if n != 2 || body[0] != alertLevelWarning || body[1] == alertCloseNotify {
				return buf, nil // ends the handshake
			}
			if ignored++; ignored > maxIgnoredRecords {
				return buf, nil // too many ignored records
			}
			continue
		}
		ignored = 0
		if msgBytes < len(msg) {
			copy(msg[msgBytes:], body)
		}
		msgBytes += n
		if msgBytes < len(msg) {
			continue
		}
		if l := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3]); l > maxHelloLen || msgBytes >= len(msg)+l {
			return buf, nil // too long to read, or complete
		}
	}
}

// readTo reads from r until buf holds n bytes, growing buf with what
// arrives (at most about twice what it holds), not with what n promises,
// and telling grew each new size.
func readTo(r io.Reader, buf []byte, n int, grew func(int)) ([]byte, error) {
	for len(buf) < n {
		if len(buf) == cap(buf) {
			nb := make([]byte, len(buf), min(n, max(2*cap(buf), 512)))
			copy(nb, buf)
			buf = nb
			grew(cap(buf))
		}
		k, err := r.Read(buf[len(buf):min(cap(buf), n)])
		buf = buf[:len(buf)+k]
		if err != nil && len(buf) < n {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return buf, err
		}
	}
	return buf, nil
}

// helloConn is a connection whose first bytes the prologue already read:
// Read returns them first, then reads the connection. It stays under the
// session's TLS connection, a pass-through once they are read. SetLinger,
// CloseWrite and NetConn reach the socket, as the other wrappers' do.
//
// During the handshake it also tells the handshake's slot when the
// handshake waits on its peer: after crypto/tls wrote to the connection, a
// Read of the connection means nothing is buffered above it (the
// Transport's buffer is empty, the prologue's bytes are used up), so the
// handshake can go no further until the peer sends.
type helloConn struct {
	net.Conn
	hello []byte         // not yet read; used by the reader only
	slot  *handshakeSlot // during the handshake only; set and cleared by its owner around it
}

var _ net.Conn = (*helloConn)(nil)

// Read returns the prologue's bytes first.
func (h *helloConn) Read(p []byte) (int, error) {
	if len(h.hello) == 0 {
		if h.slot == nil {
			return h.Conn.Read(p)
		}
		h.slot.readingPeer(true)
		defer h.slot.readingPeer(false)
		return h.Conn.Read(p)
	}
	n := copy(p, h.hello)
	h.hello = h.hello[n:]
	if len(h.hello) == 0 {
		h.hello = nil // let the buffer go
	}
	return n, nil
}

// Write writes to the connection and, during the handshake, tells the slot
// that the server has spoken.
func (h *helloConn) Write(p []byte) (int, error) {
	n, err := h.Conn.Write(p)
	if h.slot != nil && n > 0 {
		h.slot.wroteToPeer()
	}
	return n, err
}

// SetLinger forwards to the connection, for Filter.Reject and abortive
// closes.
func (h *helloConn) SetLinger(sec int) error {
	if l, ok := h.Conn.(interface{ SetLinger(int) error }); ok {
		return l.SetLinger(sec)
	}
	return nil
}

// CloseWrite forwards to the connection, for half-close.
func (h *helloConn) CloseWrite() error {
	if cw, ok := h.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// NetConn returns the wrapped connection.
func (h *helloConn) NetConn() net.Conn { return h.Conn }
