package server

import (
	"errors"
	"io"
	"net"
	"os"
	"time"

	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/trust"
)

// The prologue is what a connection goes through between Accept and its
// TLS handshake, each step waiting on the peer under its own deadline, in
// the pending set and without a handshake slot:
//
//	PROXY header (trusted upstreams only)  ProxyHeaderTimeout
//	first byte                             FirstByteTimeout
//	rest of the ClientHello                ClientHelloTimeout
//
// A handshake slot is then taken by a peer whose whole ClientHello is in,
// so the slot bounds handshake work: the server's first flight needs
// nothing more from the peer. Once that flight is written, the handshake
// waits on its peer and gives its slot up to a newcomer when the set is
// full (slots.go).

// Reasons of the conn_rejected events of the prologue.
const (
	// ReasonPendingEvicted: the pending set was full and this was its
	// oldest silent connection (or, with none silent, the oldest with an
	// unfinished ClientHello).
	ReasonPendingEvicted = "pending_evicted"
	// ReasonFirstByteTimeout: nothing came within FirstByteTimeout.
	ReasonFirstByteTimeout = "first_byte_timeout"
	// ReasonClientHelloTimeout: the ClientHello began but was not complete
	// within ClientHelloTimeout.
	ReasonClientHelloTimeout = "client_hello_timeout"
	// ReasonBadClientHello: the first records were larger than any
	// ClientHello crypto/tls accepts (maxPrologue).
	ReasonBadClientHello = "bad_client_hello"
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

// prologue runs the steps before the handshake. It returns the connection
// to use from then on, whose RemoteAddr is the client's and which the
// caller closes, and the ClientHello bytes it read, which the handshake must
// be given first (helloConn). It returns false when c was refused, evicted,
// closed by the peer or by shutdown; each case is logged and counted where
// it happened, and the caller only closes the connection.
func (s *Server) prologue(c net.Conn) (net.Conn, []byte, bool) {
	ip, _ := netfilter.PeerAddr(c.RemoteAddr()) // an upstream's address until its header names the client
	pc, v := s.pending.add(c, ip)
	if v != nil {
		s.evict(*v)
	}
	if pc == nil { // shutting down
		return c, nil, false
	}
	defer s.pending.leave(pc)

	c, ok := s.admit(c, pc)
	if !ok {
		return c, nil, false
	}
	ip, _ = netfilter.PeerAddr(c.RemoteAddr())
	s.pending.setAddr(pc, ip)

	hello, err := s.readHello(c, pc)
	switch {
	case err == nil:
		if !s.pending.leave(pc) { // evicted just now; the reset is on its way
			return c, nil, false
		}
		return c, hello, true
	case s.pending.isGone(pc):
		// Evicted (logged by the evictor) or shut down: nothing to add.
	case errors.Is(err, os.ErrDeadlineExceeded) && len(hello) == 0:
		s.cfg.Filter.Reject(c, ip, ReasonFirstByteTimeout)
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.cfg.Filter.Reject(c, ip, ReasonClientHelloTimeout)
	case errors.Is(err, errHelloTooLarge):
		s.cfg.Filter.Reject(c, ip, ReasonBadClientHello)
	default:
		// The peer left or reset before its ClientHello was complete: a
		// port check, or a client giving up. A handshake that read EOF
		// logged this before the prologue existed; it still does.
		s.stats.handshakesFailed.Add(1)
		s.handshakeFailed(c, c.RemoteAddr().String(), trust.FailureReason(err), err)
	}
	return c, nil, false
}

// evict resets a connection the pending set took out to make room.
func (s *Server) evict(v victim) {
	s.stats.pendingEvicted.Add(1)
	s.cfg.Filter.Reject(v.conn, v.ip, ReasonPendingEvicted)
}

// readHello waits up to FirstByteTimeout for c's first byte, then up to
// ClientHelloTimeout for the rest of its ClientHello, and clears the
// deadline. It moves pc to the ClientHello stage when the first byte comes,
// and accounts its buffer in the pending set's byte budget.
func (s *Server) readHello(c net.Conn, pc *pendingConn) ([]byte, error) {
	if err := c.SetReadDeadline(time.Now().Add(s.cfg.FirstByteTimeout)); err != nil {
		return nil, err
	}
	first := true
	hello, err := readClientHello(c, func(size int) {
		if first {
			first = false
			s.pending.started(pc)
			_ = c.SetReadDeadline(time.Now().Add(s.cfg.ClientHelloTimeout)) // a failure shows on the next read
		}
		for _, v := range s.pending.hold(pc, size) {
			s.evict(v)
		}
	})
	_ = c.SetReadDeadline(time.Time{})
	return hello, err
}

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
