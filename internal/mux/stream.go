package mux

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
)

// ErrReset is returned (wrapped) by a Stream's Read and Write when the peer
// reset the stream, or when the session under it ended before the stream
// did: either way the stream did not end cleanly. It satisfies
// errors.Is(err, syscall.ECONNRESET), as a reset TCP connection's error
// does, so the copy loop passes it on as a reset.
var ErrReset = fmt.Errorf("mux: stream reset: %w", syscall.ECONNRESET)

// Stream is one stream of a Session, as a net.Conn with CloseWrite (a
// half-close: FIN, reads go on) and Reset (an abortive close). Close ends
// both directions: it sends FIN if that was not done, and lets go of the
// stream at once, as closing a TCP socket does: what the peer sends
// afterwards is dropped unread, and a peer that goes on writing is reset.
// Read and Write on one Stream may run concurrently with each other and
// with Close and Reset.
type Stream struct {
	y      *yamux.Stream
	g      *guard
	closed atomic.Bool // Close or Reset was called

	wmu sync.Mutex   // one Write at a time, so that the stream's bytes stay in order
	wdl atomic.Int64 // write deadline, Unix nanoseconds; 0 means none
	rdl atomic.Int64 // read deadline, likewise
}

var _ net.Conn = (*Stream)(nil)

// StreamID returns the yamux stream ID.
func (s *Stream) StreamID() uint32 { return s.y.StreamID() }

// Read reads from the stream, from what the guard received for it (yamux
// never holds a stream's data). It waits for data until the read deadline,
// and returns io.EOF only after the peer's FIN; the peer's reset, or the end
// of the session, is ErrReset; after Close or Reset it is net.ErrClosed. A
// timeout satisfies net.Error's Timeout; data already received is returned
// even after the deadline.
func (s *Stream) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		n, wake, err := s.g.readData(s.y.StreamID(), b)
		if n > 0 || err == io.EOF {
			return n, err
		}
		if err == nil {
			err = s.g.waitCredit(wake, s.readDeadline())
		}
		if err != nil {
			return 0, s.streamError(err)
		}
	}
}

// Lend returns up to max bytes the stream received, where they are, so the
// copy loop can write them on without copying them first; it waits as Read
// does and returns the same errors. The bytes stay valid until Return, which
// says how many of them were used; Read and Lend are not called before it.
func (s *Stream) Lend(max int) ([]byte, error) {
	for {
		b, wake, err := s.g.lendData(s.y.StreamID(), max)
		if len(b) > 0 || err == io.EOF {
			return b, err
		}
		if err == nil {
			err = s.g.waitCredit(wake, s.readDeadline())
		}
		if err != nil {
			return nil, s.streamError(err)
		}
	}
}

// Return ends a Lend of which n bytes were used.
func (s *Stream) Return(n int) { s.g.giveBackData(s.y.StreamID(), n) }

// SetSink makes the session's reader hand the stream's received bytes to
// fn, on its own goroutine, whenever a frame is in and no Read or Lend
// holds them: fn writes them on if it can do so at once and returns how
// many it took, possibly 0. What it does not take waits for Read or Lend
// as before, and a FIN or a reset reaches them as before. A copy loop
// parked in Lend is then not woken for every frame, which saves a
// goroutine hand-off per frame on each end (internal/pipe sets it for a
// socket it can write to without blocking). fn must never block: the
// session's other streams wait while it runs. Nil removes it; a call of fn
// that already began still ends.
func (s *Stream) SetSink(fn func([]byte) int) { s.g.setSink(s.y.StreamID(), fn) }

func (s *Stream) readDeadline() time.Time {
	if ns := s.rdl.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// streamError maps the guard's errors to what Read and Write promise.
func (s *Stream) streamError(err error) error {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, errWriteClosed):
		return err
	case s.closed.Load():
		return fmt.Errorf("mux: stream %d: %w", s.y.StreamID(), net.ErrClosed)
	case errors.Is(err, errStreamGone) && !s.g.closed():
		return fmt.Errorf("%w by the peer", ErrReset)
	}
	return fmt.Errorf("%w: the session closed", ErrReset)
}

// Write writes to the stream, within the window the peer granted: it
// waits for more window, until the write deadline. The guard writes the
// data frames itself, from the calling goroutine (see guard.writeData). A
// timeout satisfies net.Error's Timeout, and Write returns what it wrote
// before it; see Read for the other errors.
func (s *Stream) Write(b []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	n, err := s.g.writeData(s.y.StreamID(), b, s.writeDeadline)
	if err != nil {
		return n, s.streamError(err)
	}
	return n, nil
}

func (s *Stream) writeDeadline() time.Time {
	if ns := s.wdl.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// CloseWrite sends FIN; reads go on until the peer's FIN.
func (s *Stream) CloseWrite() error { return s.y.Close() }

// Close sends FIN (if CloseWrite did not) and lets go of the stream: what is
// buffered is dropped, and the stream no longer counts against the session's
// budget. Reads and writes then fail with net.ErrClosed. It is idempotent.
func (s *Stream) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	err := s.y.Close()
	s.g.release(s.y.StreamID(), false)
	return err
}

// Reset ends the stream abortively, as SO_LINGER 0 does a TCP connection:
// it drops what is buffered, frees the stream at once and sends the peer a
// RST, whose Read and Write then return ErrReset. It always returns nil.
func (s *Stream) Reset() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.g.release(s.y.StreamID(), true)
	return nil
}

// SetDeadline, SetReadDeadline and SetWriteDeadline set the stream's
// deadlines, as net.Conn's.
func (s *Stream) SetDeadline(t time.Time) error {
	s.SetWriteDeadline(t)
	return s.SetReadDeadline(t)
}

func (s *Stream) SetReadDeadline(t time.Time) error {
	s.rdl.Store(unixNano(t))
	s.g.wakeReader(s.y.StreamID())
	return nil
}

func (s *Stream) SetWriteDeadline(t time.Time) error {
	s.wdl.Store(unixNano(t))
	s.g.wakeWriter(s.y.StreamID())
	return nil
}

// unixNano is t in Unix nanoseconds, 0 for the zero time (no deadline).
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// LocalAddr and RemoteAddr are the session's addresses.
func (s *Stream) LocalAddr() net.Addr  { return s.y.LocalAddr() }
func (s *Stream) RemoteAddr() net.Addr { return s.y.RemoteAddr() }
