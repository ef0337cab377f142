// Package mux holds the yamux settings both roles share, runs sessions over
// a connection that writes each frame in one syscall, and adapts a yamux
// stream to the half-close interface the copy loop uses.
package mux

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"
	_ "unsafe" // for go:linkname

	"github.com/hashicorp/yamux"
	"github.com/sirupsen/logrus"
)

// Window is the per-stream receive window. One stream moves at most about
// a window per round trip, and yamux grants more only after half of it was
// read: yamux's 256 KiB default caps a stream near 5 MB/s at 50 ms, 4 MiB
// near 50 MB/s, and 16 MiB keeps a 1 Gbit/s link at 50 ms full (measured:
// scripts/bench, scenario wan). The buffer behind it grows only while the
// reader lags, so idle and fast streams cost nothing; the worst case per
// session is streams x Window, which the server bounds with its per-session
// stream cap.
const Window = 16 << 20

// DefaultTimeout is the default for Config's timeout.
const DefaultTimeout = 10 * time.Second

// Config returns the yamux configuration for one session. keepalive is the
// ping interval (0 turns pings off); timeout bounds a ping's answer and any
// frame write (0 means DefaultTimeout), so a dead peer is noticed within
// keepalive + timeout.
func Config(log *logrus.Entry, keepalive, timeout time.Duration) *yamux.Config {
	c := yamux.DefaultConfig()
	// Streams are accepted and given a goroutine at once, so the backlog only
	// absorbs bursts between Accept calls.
	c.AcceptBacklog = 1024
	c.EnableKeepAlive = keepalive > 0
	if keepalive > 0 {
		c.KeepAliveInterval = keepalive
	}
	c.MaxStreamWindowSize = Window
	// A session whose frames cannot be written for this long, or whose ping
	// is not answered, is dead (or the peer stopped reading the whole
	// connection): close it rather than hang.
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	c.ConnectionWriteTimeout = timeout
	// The opener waits this long for the server to read a stream's header;
	// the server reads it at once, so a longer wait means a stuck session.
	c.StreamOpenTimeout = 30 * time.Second
	// No timer after our side closes. yamux's Close is also our half-close
	// (FIN), and its close timer would reset a stream whose other direction
	// is still moving bytes (a client that sent its query and shut its write
	// half, waiting for a long answer). A stream whose peer never finishes
	// is ended by the idle timeout, or with its session.
	c.StreamCloseTimeout = 0
	c.LogOutput = nil
	c.Logger = logger{log}
	return c
}

// logger sends yamux's own lines to logrus at debug level: every condition
// they report (a reset peer, a keepalive failure) also ends the session, and
// the session_closed event reports that once, with its reason.
type logger struct{ log *logrus.Entry }

func (l logger) Print(v ...any)                 { l.emit(fmt.Sprint(v...)) }
func (l logger) Printf(format string, v ...any) { l.emit(fmt.Sprintf(format, v...)) }
func (l logger) Println(v ...any)               { l.emit(fmt.Sprint(v...)) }

func (l logger) emit(msg string) {
	l.log.WithField("component", "yamux").Debug(strings.TrimSpace(msg))
}

// Stream is a yamux stream as the copy loop needs it: with CloseWrite
// (yamux's Close is itself a half-close: it sends FIN and reads go on until
// the peer's FIN), with Reset for an abortive close, and with errors that
// tell a reset from a clean end.
type Stream struct{ *yamux.Stream }

// ErrReset is returned (wrapped) by a Stream's Read and Write when the peer
// reset the stream, or when the session under it ended before the stream
// did: either way the stream did not end cleanly. It satisfies
// errors.Is(err, syscall.ECONNRESET), as a reset TCP connection's error
// does, so the copy loop passes it on as a reset.
var ErrReset = fmt.Errorf("mux: stream reset: %w", syscall.ECONNRESET)

// CloseWrite sends FIN on the stream; reads continue.
func (s Stream) CloseWrite() error { return s.Stream.Close() }

// Read reads from the stream. It returns io.EOF only after the peer's FIN:
// an EOF that yamux reports because the session closed is a loss, and is
// returned as ErrReset, as is the peer's reset.
func (s Stream) Read(b []byte) (int, error) {
	n, err := s.Stream.Read(b)
	return n, s.resetError(err)
}

// Write writes to the stream; a reset by the peer or a closed session is
// returned as ErrReset.
func (s Stream) Write(b []byte) (int, error) {
	n, err := s.Stream.Write(b)
	return n, s.resetError(err)
}

// resetError returns err as ErrReset when it comes from the peer's RST or
// from the end of the session, and otherwise unchanged. yamux ends every
// stream of a closed session with io.EOF on reads and ErrStreamClosed on
// writes, as after a FIN: a FIN that came just before the session closed
// is reported as a reset too, which only costs a clean end that was
// already cut short on the other side.
func (s Stream) resetError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, yamux.ErrConnectionReset):
		return fmt.Errorf("%w by the peer", ErrReset)
	case errors.Is(err, yamux.ErrSessionShutdown) || s.Stream.Session().IsClosed():
		return fmt.Errorf("%w: the session closed", ErrReset)
	}
	return err
}

// Reset ends the stream abortively, as SO_LINGER 0 does a TCP connection:
// it drops what is buffered, frees the stream at once and sends the peer a
// RST, whose Read and Write then return ErrReset. It always returns nil.
func (s Stream) Reset() error {
	streamReset(s.Stream)
	return nil
}

// streamReset is yamux's (*Stream).closeTimeout, which does exactly that
// (force-close, remove from the session, send RST) for its close timer;
// yamux v0.1.2 exports no reset. Pinned by go.mod; a yamux without it
// fails to link, and TestStreamReset checks what it does.
//
//go:linkname streamReset github.com/hashicorp/yamux.(*Stream).closeTimeout
func streamReset(*yamux.Stream)
