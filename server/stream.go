package server

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/internal/pipe"
	"github.com/tunnel-dev/tunnel/internal/wire"
)

// statusWriteTimeout bounds writing a status byte: the stream's window is
// fresh, so only a dead session makes it wait.
const statusWriteTimeout = 10 * time.Second

// serveStream runs one stream: slot, header, route, dial, status, copy. It
// closes st.
func (s *Server) serveStream(ctx context.Context, ss *session, yst *yamux.Stream) {
	st := mux.Stream{Stream: yst}
	defer st.Close()
	s.activeStreams.Add(1)
	defer s.activeStreams.Add(-1)
	s.stats.streamsTotal.Add(1)

	select {
	case ss.slots <- struct{}{}:
		defer func() { <-ss.slots }()
	default:
		s.stats.limitStreams.Add(1)
		s.refuse(ss, st, "", wire.StatusOverLimit, errStreamCap)
		return
	}

	st.SetReadDeadline(time.Now().Add(s.cfg.HeaderTimeout))
	name, err := wire.ReadHeader(st)
	st.SetReadDeadline(time.Time{})
	if err != nil {
		s.refuse(ss, st, "", wire.StatusBadHeader, err)
		return
	}
	// Counted as open on the route before the rules are read, so that a
	// reload either sees this stream or this stream sees the new rules.
	leave := ss.use.enter(name)
	defer leave()
	route, ok := s.route(name)
	if !ok {
		s.refuse(ss, st, name, wire.StatusUnknownRoute, nil)
		return
	}
	if reason := route.Access.Decide(ss.peer); reason != "" {
		s.forbid(ss, st, route, reason)
		return
	}
	backend, err := s.dialBackend(ctx, route, ss.mux.RemoteAddr(), ss.mux.LocalAddr())
	if err != nil {
		s.refuse(ss, st, name, wire.StatusBackendUnreachable, err)
		return
	}
	st.SetWriteDeadline(time.Now().Add(statusWriteTimeout))
	err = wire.WriteStatus(st, wire.StatusOK)
	st.SetWriteDeadline(time.Time{})
	if err != nil {
		backend.Close()
		return // the session is going away; session_closed says why
	}
	// The entry is built after the copy, and the debug line only when
	// enabled: an idle stream then holds no log fields (about 1.5 KiB of
	// each stream's memory with 10 000 open; docs/BENCHMARKS.md, streams).
	if ss.log.Logger.IsLevelEnabled(logrus.DebugLevel) {
		ss.log.WithFields(logrus.Fields{audit.Route: name, audit.Backend: route.Target, audit.Event: audit.StreamOpened}).Debug("stream opened")
	}
	start := time.Now()
	in, out, err := pipe.Run(st, backend, s.cfg.IdleTimeout)
	log := ss.log.WithFields(logrus.Fields{audit.Route: name, audit.Backend: route.Target})
	s.stats.routes.add(name, in, out)
	fields := logrus.Fields{
		audit.Event: audit.StreamClosed, audit.BytesIn: in, audit.BytesOut: out,
		audit.DurationMS: time.Since(start).Milliseconds(),
	}
	if err != nil {
		fields[audit.Error] = err.Error()
	}
	log.WithFields(fields).Info("stream closed")
}

// dial connects to the route's backend under DialTimeout.
func (s *Server) dial(ctx context.Context, r Route) (net.Conn, error) {
	network, addr := r.network()
	d := net.Dialer{
		Timeout:         s.cfg.DialTimeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 4},
	}
	// NoDelay is Go's default for TCP; the copy loop writes whole buffers.
	began := time.Now()
	c, err := d.DialContext(ctx, network, addr)
	if err == nil {
		s.stats.dialTime.observe(time.Since(began))
	}
	return c, err
}

// refuse answers a stream with a non-zero status, logs why and closes it.
func (s *Server) refuse(ss *session, st mux.Stream, route string, code wire.Status, cause error) {
	s.stats.refused[code].Add(1)
	st.SetWriteDeadline(time.Now().Add(statusWriteTimeout))
	_ = wire.WriteStatus(st, code) // the peer may be gone; the log line stands either way
	fields := logrus.Fields{audit.Event: audit.StreamRefused, audit.Status: code.String()}
	if route != "" {
		fields[audit.Route] = route
	}
	if cause != nil {
		var ne net.Error
		if errors.As(cause, &ne) && ne.Timeout() && code == wire.StatusBadHeader {
			fields[audit.Reason] = "header_timeout"
		}
		fields[audit.Error] = cause.Error()
	}
	if code == wire.StatusOverLimit {
		// A client can cause these at will: one line per interval.
		n, _, ok := ss.limitLog.Hit(code.String())
		if !ok {
			return
		}
		if n > 1 {
			fields[audit.Count] = n
		}
	}
	ss.log.WithFields(fields).Warn("stream refused: " + code.String())
}
