package server

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/time/rate"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/internal/wire"
)

// Publications: a client publishes a name on a stream it opens with a
// version-2 publish header (docs/PROTOCOL.md section 7.2); the publication
// lives as long as that stream and its session, and the server opens the
// streams of the name's inbound connections only toward live publications.

// maxPublicationsPerSession bounds the names one session publishes at
// once: a client publishes a handful.
const maxPublicationsPerSession = 64

// Reasons of publish_refused and publish_removed lines of the server,
// besides the rule reasons of Access.Decide.
const (
	ReasonUnknownExpose    = "unknown_expose"           // no expose of the name
	ReasonAlreadyPublished = "already_published"        // the session publishes the name already
	ReasonTooManyPublished = "publications_per_session" // the session publishes maxPublicationsPerSession names
	ReasonSessionGoingAway = "session_going_away"       // the server sent the session GoAway
	ReasonWithdrawn        = "withdrawn"                // the client closed the publication's stream
	ReasonSessionClosed    = "session_closed"           // the session ended
	ReasonPublishProtocol  = "protocol_error"           // the client sent bytes on the publication's stream
)

// publication is one session's live publication of a name.
type publication struct {
	name   string
	ss     *session
	st     *mux.Stream   // the publish stream; closing it withdraws the publication
	since  time.Time     // when it went live
	opens  *rate.Limiter // reverse-stream opens toward it; nil: no rate limit
	active atomic.Int64  // inbound connections carried on it now, or being opened
	total  atomic.Uint64 // inbound connections it was picked for
	why    atomic.Pointer[string]
}

// withdraw ends p from the server's side, for reason: its stream is
// closed (the client sees FIN), and servePublish removes it.
func (p *publication) withdraw(reason string) {
	p.why.CompareAndSwap(nil, &reason)
	p.st.Close()
}

// release gives back what pick reserved for one inbound connection.
func (p *publication) release() {
	p.active.Add(-1)
	p.ss.active.Add(-1)
}

// publications are the live publications by name. Safe for concurrent use.
type publications struct {
	mu     sync.Mutex
	byName map[string][]*publication // made lazily; guarded by mu
	count  map[*session]int          // publications per session; made lazily; guarded by mu
}

// add makes p live, or returns why it may not be: the session publishes
// the name already, or too many names.
func (t *publications) add(p *publication) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, q := range t.byName[p.name] {
		if q.ss == p.ss {
			return ReasonAlreadyPublished
		}
	}
	if t.count[p.ss] >= maxPublicationsPerSession {
		return ReasonTooManyPublished
	}
	if t.byName == nil {
		t.byName, t.count = map[string][]*publication{}, map[*session]int{}
	}
	t.byName[p.name] = append(t.byName[p.name], p)
	t.count[p.ss]++
	return ""
}

// remove takes p out; it is idempotent.
func (t *publications) remove(p *publication) {
	t.mu.Lock()
	defer t.mu.Unlock()
	list := t.byName[p.name]
	for i, q := range list {
		if q != p {
			continue
		}
		list = append(list[:i:i], list[i+1:]...)
		if len(list) == 0 {
			delete(t.byName, p.name)
		} else {
			t.byName[p.name] = list
		}
		if t.count[p.ss]--; t.count[p.ss] <= 0 {
			delete(t.count, p.ss)
		}
		return
	}
}

// of returns the live publications of name, or of every name if name is "".
func (t *publications) of(name string) []*publication {
	t.mu.Lock()
	defer t.mu.Unlock()
	if name != "" {
		return append([]*publication(nil), t.byName[name]...)
	}
	var out []*publication
	for _, list := range t.byName {
		out = append(out, list...)
	}
	return out
}

// ofSession returns the live publications of ss.
func (t *publications) ofSession(ss *session) []*publication {
	var out []*publication
	for _, p := range t.of("") {
		if p.ss == ss {
			out = append(out, p)
		}
	}
	return out
}

// pick chooses the publication of name to carry one more inbound
// connection: among the live ones not in tried and below capacity, the
// one carrying the fewest now (ties: the one picked least often, so that
// short connections one after another spread too), within its stream
// rate. It reserves a stream on it (release gives it back). With none to
// pick it returns the reason the inbound connection is reset:
// ReasonNoPublisher (none live), ReasonPublisherLimit (all at capacity or
// rate) or ReasonPublisherFailed (all tried).
func (t *publications) pick(name string, capacity int, tried map[*publication]bool) (*publication, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	list := t.byName[name]
	if len(list) == 0 {
		return nil, ReasonNoPublisher
	}
	reason := ReasonPublisherFailed
	skip := map[*publication]bool{}
	for {
		var best *publication
		for _, p := range list {
			if tried[p] || skip[p] || p.ss.mux.IsClosed() || p.ss.away.Load() {
				continue
			}
			if p.active.Load() >= int64(capacity) {
				reason = ReasonPublisherLimit
				continue
			}
			if best == nil || p.active.Load() < best.active.Load() ||
				p.active.Load() == best.active.Load() && p.total.Load() < best.total.Load() {
				best = p
			}
		}
		if best == nil {
			return nil, reason
		}
		if best.opens != nil && !best.opens.Allow() {
			skip[best] = true
			reason = ReasonPublisherLimit
			continue
		}
		best.active.Add(1)
		best.total.Add(1)
		best.ss.active.Add(1)
		return best, ""
	}
}

// servePublish serves a stream the client opened with a publish header
// for name: it checks the expose's rules, answers the status, and keeps
// the publication live until the client closes the stream, the server
// withdraws it or the session ends. The caller closes st.
func (s *Server) servePublish(ctx context.Context, ss *session, st *mux.Stream, name string) {
	log := ss.log.WithField(audit.Expose, name)
	x, ok := s.policy.Load().exposes[name]
	if !ok {
		s.publishRefused(ss, st, log, wire.StatusUnknownRoute, ReasonUnknownExpose, "")
		return
	}
	if reason := x.Publishers.Decide(ss.peer); reason != "" {
		s.publishRefused(ss, st, log, wire.StatusForbidden, reason, x.Publishers.Name)
		return
	}
	p := &publication{name: name, ss: ss, st: st, since: time.Now()}
	if s.cfg.StreamRate > 0 {
		p.opens = rate.NewLimiter(rate.Limit(s.cfg.StreamRate), s.maxPerPublisher(x))
	}
	if reason := s.pubs.add(p); reason != "" {
		s.publishRefused(ss, st, log, wire.StatusOverLimit, reason, "")
		return
	}
	defer s.pubs.remove(p)
	if ss.away.Load() { // checked after add: goAway withdraws what was added before it
		s.publishRefused(ss, st, log, wire.StatusOverLimit, ReasonSessionGoingAway, "")
		return
	}
	st.SetWriteDeadline(time.Now().Add(statusWriteTimeout))
	err := wire.WriteStatus(st, wire.StatusOK)
	st.SetWriteDeadline(time.Time{})
	if err != nil {
		return // the session is going away; session_closed says why
	}
	s.exposes[name].stats.published.Add(1)
	log.WithFields(logrus.Fields{audit.Event: audit.PublishAdded, audit.RuleSet: x.Publishers.Name}).Info("publication added")
	// Nothing more comes on this stream: a read ends with the publication.
	var b [1]byte
	n, err := st.Read(b[:])
	reason := ReasonSessionClosed
	switch {
	case p.why.Load() != nil:
		reason = *p.why.Load()
	case n > 0:
		reason = ReasonPublishProtocol
		st.Reset()
	case errors.Is(err, io.EOF):
		reason = ReasonWithdrawn
	case ctx.Err() != nil:
		reason = "shutdown"
	}
	s.pubs.remove(p) // before the line: a reader of the log finds it gone
	log.WithFields(logrus.Fields{audit.Event: audit.PublishRemoved, audit.Reason: reason, audit.DurationMS: time.Since(p.since).Milliseconds(),
		"streams": p.total.Load()}).Info("publication removed")
}

// publishRefused answers a publish stream with code and logs
// publish_refused, throttled per session and reason as stream refusals are.
func (s *Server) publishRefused(ss *session, st *mux.Stream, log *logrus.Entry, code wire.Status, reason, ruleSet string) {
	s.stats.publishRefused.Add(1)
	st.SetWriteDeadline(time.Now().Add(statusWriteTimeout))
	_ = wire.WriteStatus(st, code) // the peer may be gone; the log line stands either way
	n, _, ok := ss.refuseLog.Hit(refusalKey{status: code, reason: "publish:" + reason})
	if !ok {
		return
	}
	fields := logrus.Fields{audit.Event: audit.PublishRefused, audit.Status: code.String(), audit.Reason: reason}
	if ruleSet != "" {
		fields[audit.RuleSet] = ruleSet
	}
	if n > 1 {
		fields[audit.Count] = n
	}
	log.WithFields(fields).Warn("publication refused: " + reason)
}

// withdrawSession withdraws every publication of ss (it was sent GoAway:
// its client publishes again on its next session). ss.away is set first,
// so a publication that comes later is refused by servePublish.
func (s *Server) withdrawSession(ss *session, reason string) {
	for _, p := range s.pubs.ofSession(ss) {
		p.withdraw(reason)
	}
}

// publishCheck returns why ss may no longer publish one of the names it
// publishes under the current rules, with the expose and rule set, or "".
func (s *Server) publishCheck(ss *session) (string, logrus.Fields) {
	exposes := s.policy.Load().exposes
	for _, p := range s.pubs.ofSession(ss) {
		x, ok := exposes[p.name]
		if !ok {
			continue // a removed expose: Reload withdraws its publications
		}
		if reason := x.Publishers.Decide(ss.peer); reason != "" {
			return reason, logrus.Fields{audit.Expose: p.name, audit.RuleSet: x.Publishers.Name}
		}
	}
	return "", nil
}

// withdrawRemoved withdraws the publications of names the current policy
// no longer exposes.
func (s *Server) withdrawRemoved() {
	exposes := s.policy.Load().exposes
	for _, p := range s.pubs.of("") {
		if _, ok := exposes[p.name]; !ok {
			p.withdraw(ReasonExposeRemoved)
		}
	}
}

// maxPerPublisher is x's cap of inbound connections per publishing session.
func (s *Server) maxPerPublisher(x Expose) int {
	if x.MaxStreamsPerPublisher > 0 {
		return x.MaxStreamsPerPublisher
	}
	return s.cfg.MaxStreamsPerSession
}
