// Package mux runs the tunnel's yamux sessions behind a frame guard that
// checks every frame, bounds what a peer can make its end hold and carries
// the streams' data itself; yamux keeps the sessions' and streams' state.
package mux

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/sirupsen/logrus"
)

// DefaultMaxWindow is the default ceiling of a stream's receive window. A
// stream moves at most about a window per round trip: 16 MiB keeps a
// 1 Gbit/s link at 50 ms full. A stream starts at yamux's 256 KiB and its
// window grows only while its reader keeps up and the budget allows (see
// Options.MaxWindow), so a loopback or LAN stream stays small.
const DefaultMaxWindow = 16 << 20

// DefaultTimeout is the default for Options.Timeout.
const DefaultTimeout = 10 * time.Second

// Options configures a Session. The zero value of each field is documented
// on it; Log is required.
type Options struct {
	// Log receives yamux's own lines, at debug level.
	Log *logrus.Entry

	// Keepalive is the ping interval; zero turns pings off.
	Keepalive time.Duration

	// Timeout bounds a ping's answer and any frame write; zero means
	// DefaultTimeout. A dead peer is noticed within Keepalive + Timeout.
	Timeout time.Duration

	// MaxStreams is how many streams the peer may have open at once
	// (streams the application closed count until the peer finishes them
	// too, for at most 10 s). A stream past it is refused before its data
	// is buffered. Zero: the peer may open none.
	MaxStreams int

	// StreamRate, if positive, bounds stream opens by the peer to this many
	// a second, with a burst of MaxStreams. Zero: no rate limit.
	StreamRate float64

	// Refusal is the data a stream the guard refuses gets, followed by a
	// FIN (the server's over-limit status byte). Nil: such a stream is
	// reset.
	Refusal []byte

	// Budget bounds the bytes this session's streams hold received and not
	// yet read; nil means a Budget of DefaultSessionBudget with no parent.
	// A data frame that would pass it resets its stream, and a new stream
	// is refused while the budget is three quarters full.
	Budget *Budget

	// MaxWindow is the ceiling of a stream's receive window; zero means
	// DefaultMaxWindow. It is at least yamux's initial 256 KiB.
	MaxWindow uint32

	// OnLimit, if set, is told of each stream refused or reset for a limit.
	// It is called from the session's reading goroutine and must not block.
	OnLimit func(LimitEvent)
}

func (o Options) withDefaults() (*Options, error) {
	if o.Log == nil {
		return nil, errors.New("mux: Options.Log is nil")
	}
	if o.Keepalive < 0 || o.Timeout < 0 || o.MaxStreams < 0 || o.StreamRate < 0 {
		return nil, errors.New("mux: negative value in Options")
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Budget == nil {
		o.Budget = NewBudget(DefaultSessionBudget, nil)
	}
	if o.MaxWindow == 0 {
		o.MaxWindow = DefaultMaxWindow
	}
	o.MaxWindow = max(o.MaxWindow, initialWindow)
	return &o, nil
}

// yamuxConfig is the yamux configuration under o.
func (o *Options) yamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	// The guard refuses streams past MaxStreams before yamux sees them, so
	// yamux's own backlog never refuses one. yamux also caps our own opens
	// that await the peer's acknowledgement at this number: a client opening
	// connections as fast as it can must not wait on it.
	c.AcceptBacklog = max(o.MaxStreams, 1024) + 16
	c.EnableKeepAlive = o.Keepalive > 0
	if o.Keepalive > 0 {
		c.KeepAliveInterval = o.Keepalive
	}
	// yamux never holds a stream's data (the guard takes the bodies of data
	// frames into its own buffers and hands yamux their flags alone), and
	// the guard rewrites yamux's window updates: yamux's window is moot.
	c.MaxStreamWindowSize = o.MaxWindow
	// A session whose frames cannot be written for this long, or whose ping
	// is not answered, is dead (or the peer stopped reading the whole
	// connection): close it rather than hang.
	c.ConnectionWriteTimeout = o.Timeout
	// The opener waits this long for the acceptor to acknowledge a stream;
	// a longer wait means a stuck session.
	c.StreamOpenTimeout = 30 * time.Second
	// No timer after our side closes: yamux's Close is our half-close
	// (FIN), and its timer would reset a stream whose other direction is
	// still moving bytes. Stream.Close lets go of a stream at once instead.
	c.StreamCloseTimeout = 0
	c.LogOutput = nil
	c.Logger = logger{o.Log}
	return c
}

// logger sends yamux's own lines to logrus at debug level: every condition
// they report (a reset peer, a keepalive failure) also ends the session, and
// the session_closed event reports that once, with its reason.
type logger struct{ log *logrus.Entry }

func (l logger) Print(v ...any) {
	if l.log.Logger.IsLevelEnabled(logrus.DebugLevel) {
		l.emit(fmt.Sprint(v...))
	}
}

func (l logger) Printf(format string, v ...any) {
	if l.log.Logger.IsLevelEnabled(logrus.DebugLevel) {
		l.emit(fmt.Sprintf(format, v...))
	}
}

func (l logger) Println(v ...any) { l.Print(v...) }

func (l logger) emit(msg string) {
	l.log.WithField("component", "yamux").Debug(strings.TrimSpace(msg))
}
