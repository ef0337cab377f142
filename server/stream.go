package server

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/internal/pipe"
	"github.com/tunnel-dev/tunnel/internal/wire"
)

// statusWriteTimeout bounds writing a status byte: the stream's window is
// fresh, so only a dead session makes it wait.
const statusWriteTimeout = 10 * time.Second

// serveStream runs one stream the guard admitted (within the session's
// stream cap, open rate and budget): header, route, dial, status, copy. It
// closes st, which also lets go of a refused stream at once: nothing the
// client sends after the status is buffered.
func (s *Server) serveStream(ctx context.Context, ss *session, st *mux.Stream) {
	defer st.Close()
	s.activeStreams.Add(1)
	ss.active.Add(1)
	counted := true
	defer func() {
		if counted {
			s.activeStreams.Add(-1)
			ss.active.Add(-1)
		}
	}()
	s.stats.streamsTotal.Add(1)

	st.SetReadDeadline(time.Now().Add(s.cfg.HeaderTimeout))
	req, err := wire.ReadRequest(st)
	st.SetReadDeadline(time.Time{})
	if err != nil {
		s.refuse(ss, st, "", wire.StatusBadHeader, err)
		return
	}
	name := req.Name
	if req.Publish {
		// A publication carries no bytes and lasts as long as its client
		// wants: neither the drain nor the session's lifetime waits for it.
		s.activeStreams.Add(-1)
		ss.active.Add(-1)
		counted = false
		s.servePublish(ctx, ss, st, name)
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
		ss.log.WithFields(logrus.Fields{audit.Route: name, audit.Backend: route.Target, audit.Direction: audit.DirectionForward, audit.Event: audit.StreamOpened}).Debug("stream opened")
	}
	start := time.Now()
	ss.total.Add(1)
	in, out, err := pipe.Run(st, backend, pipe.Options{Idle: s.cfg.IdleTimeout, Memory: ss.mux.Budget(), Count: &ss.bytes})
	log := ss.log.WithFields(logrus.Fields{audit.Route: name, audit.Backend: route.Target, audit.Direction: audit.DirectionForward})
	s.stats.routes.add(name, in, out)
	log.WithFields(audit.StreamClosedFields(in, out, start, err)).Info("stream closed")
}

// refuse answers a stream with a non-zero status and logs why; the
// caller's Close then lets go of the stream.
func (s *Server) refuse(ss *session, st *mux.Stream, route string, code wire.Status, cause error) {
	s.stats.refused[code].Add(1)
	st.SetWriteDeadline(time.Now().Add(statusWriteTimeout))
	_ = wire.WriteStatus(st, code) // the peer may be gone; the log line stands either way
	fields := logrus.Fields{}
	if route != "" {
		fields[audit.Route] = route
	}
	if cause != nil {
		if ne, ok := errors.AsType[net.Error](cause); ok && ne.Timeout() && code == wire.StatusBadHeader {
			fields[audit.Reason] = "header_timeout"
		}
		fields[audit.Error] = cause.Error()
	}
	s.refusedLine(ss, code, fields, "stream refused: "+code.String())
}

// refusalKey is what stream refusal lines are throttled by in a session:
// status, reason and configured route (an unknown route's name is the
// client's to choose, so it is not part of the key).
type refusalKey struct {
	status wire.Status
	reason string
	route  string
	reset  bool // a stream_reset line rather than stream_refused
}

// refusedLine logs a stream_refused line with fields, at most one per
// interval for each status and reason in a session, with the count it
// stands for: a client can refuse itself streams at will. What the
// throttle held back is logged when the session ends (flushRefusals).
func (s *Server) refusedLine(ss *session, code wire.Status, fields logrus.Fields, msg string) {
	key := refusalKey{status: code}
	key.reason, _ = fields[audit.Reason].(string)
	if code != wire.StatusUnknownRoute {
		key.route, _ = fields[audit.Route].(string)
	}
	n, _, ok := ss.refuseLog.Hit(key)
	if !ok {
		return
	}
	if n > 1 {
		fields[audit.Count] = n
	}
	fields[audit.Event] = audit.StreamRefused
	fields[audit.Status] = code.String()
	ss.log.WithFields(fields).Warn(msg)
}

// limited counts and logs a stream the guard refused or reset for a limit.
// It runs on the session's reading goroutine.
func (s *Server) limited(ss *session, e mux.LimitEvent) {
	switch e.Reason {
	case mux.ReasonStreamCap:
		s.stats.limitStreams.Add(1)
	case mux.ReasonStreamRate:
		s.stats.limitStreamRate.Add(1)
	case mux.ReasonBudget:
		s.stats.limitBudget.Add(1)
	}
	if !e.Reset {
		s.stats.refused[wire.StatusOverLimit].Add(1)
		s.refusedLine(ss, wire.StatusOverLimit, logrus.Fields{audit.Reason: e.Reason, audit.Limit: limitFlag[e.Reason]},
			"stream refused: "+wire.StatusOverLimit.String())
		return
	}
	n, _, ok := ss.refuseLog.Hit(refusalKey{reason: e.Reason, reset: true})
	if !ok {
		return
	}
	fields := logrus.Fields{audit.Event: audit.StreamReset, audit.Reason: e.Reason, audit.Limit: limitFlag[e.Reason]}
	if n > 1 {
		fields[audit.Count] = n
	}
	ss.log.WithFields(fields).Warn("stream reset: the session's memory budget is used up")
}

// flushRefusals logs, when a session ends, the refusals and resets its
// throttle held back since their last line, one line for each kind.
func (s *Server) flushRefusals(ss *session) {
	ss.refuseLog.Flush(func(k refusalKey, folded bool, n uint64) {
		fields := logrus.Fields{audit.Event: audit.StreamRefused, audit.Status: k.status.String(), audit.Count: n}
		if k.reset {
			fields = logrus.Fields{audit.Event: audit.StreamReset, audit.Count: n}
		}
		if k.reason != "" {
			fields[audit.Reason] = k.reason
		}
		if k.route != "" {
			fields[audit.Route] = k.route
		}
		ss.log.WithFields(fields).Warn("session ended: refusals not logged one by one since the last line")
	})
}

// The settings behind the limits, as the limit field of their log lines
// names them (their config file keys).
const (
	limitMaxSessions = "max_sessions_per_identity"
	limitMaxLifetime = "max_session_lifetime"
)

// limitFlag names the setting behind each stream limit reason.
var limitFlag = map[string]string{
	mux.ReasonStreamCap:  "max_streams",
	mux.ReasonStreamRate: "max_stream_rate",
	mux.ReasonBudget:     "session_memory",
}

// forbid answers a stream that route's rules refuse with StatusForbidden
// and logs stream_refused with the identity (the session's fields), the
// route, the rule set and the reason.
func (s *Server) forbid(ss *session, st *mux.Stream, route Route, reason string) {
	code := wire.StatusForbidden
	s.stats.refused[code].Add(1)
	st.SetWriteDeadline(time.Now().Add(statusWriteTimeout))
	_ = wire.WriteStatus(st, code) // the peer may be gone; the log line stands either way
	s.refusedLine(ss, code, logrus.Fields{audit.Route: route.Name, audit.RuleSet: route.Access.Name, audit.Reason: reason},
		"stream refused: forbidden by the route's rules")
}
