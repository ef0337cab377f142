package server

import (
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunnel-dev/tunnel/internal/wire"
	"github.com/tunnel-dev/tunnel/netfilter"
)

// Histogram is a snapshot of a latency histogram: Counts[i] observations
// fell at or below Bounds[i] (and above Bounds[i-1]); Count is all of them,
// including those above the last bound, and Sum their total.
type Histogram struct {
	Bounds []time.Duration
	Counts []uint64
	Count  uint64
	Sum    time.Duration
}

// latencyBounds suit both a TLS handshake and a backend dial: loopback
// dials take tens of microseconds, handshakes across a WAN hundreds of
// milliseconds.
var latencyBounds = []time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// histogram counts durations into latencyBounds with atomics only.
type histogram struct {
	counts [17]atomic.Uint64 // one per bound, plus one above the last
	sum    atomic.Int64      // nanoseconds
}

func (h *histogram) observe(d time.Duration) {
	i := 0
	for i < len(latencyBounds) && d > latencyBounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(int64(d))
}

func (h *histogram) snapshot() Histogram {
	out := Histogram{Bounds: latencyBounds, Counts: make([]uint64, len(latencyBounds))}
	for i := range h.counts {
		n := h.counts[i].Load()
		if i < len(out.Counts) {
			out.Counts[i] = n
		}
		out.Count += n
	}
	out.Sum = time.Duration(h.sum.Load())
	return out
}

// RouteStats are one route's counters.
type RouteStats struct {
	Streams  uint64 // streams that reached the backend
	BytesIn  uint64 // towards the backend
	BytesOut uint64 // back from it
}

// routeCounters are the live counters behind RouteStats.
type routeCounters struct {
	streams, in, out atomic.Uint64
}

// routeTable holds counters per route name. Names come from the
// configuration (a stream for an unknown route is refused before it is
// counted), so the table is bounded by what the operator configured.
type routeTable struct{ m sync.Map } // string -> *routeCounters

func (t *routeTable) add(route string, in, out int64) {
	v, ok := t.m.Load(route)
	if !ok {
		v, _ = t.m.LoadOrStore(route, new(routeCounters))
	}
	rc := v.(*routeCounters)
	rc.streams.Add(1)
	rc.in.Add(uint64(max(in, 0)))
	rc.out.Add(uint64(max(out, 0)))
}

func (t *routeTable) snapshot() map[string]RouteStats {
	out := make(map[string]RouteStats)
	t.m.Range(func(k, v any) bool {
		rc := v.(*routeCounters)
		out[k.(string)] = RouteStats{Streams: rc.streams.Load(), BytesIn: rc.in.Load(), BytesOut: rc.out.Load()}
		return true
	})
	return out
}

// Stats is a snapshot of the server's counters.
type Stats struct {
	// HandshakeLimit counts connections refused because every handshake
	// slot was working; HandshakesEvicted, handshakes reset to make room
	// for a newcomer because they were the oldest waiting on their peer.
	HandshakesOK, HandshakesFailed, HandshakeLimit, HandshakesEvicted uint64
	// HandshakesResumed are the successful handshakes that resumed a TLS
	// session (a ticket), counted in HandshakesOK too.
	HandshakesResumed uint64
	// HandshakesInFlight are the handshakes holding a slot now, and
	// HandshakesWaiting those of them waiting for their peer's next
	// flight (the server's is written).
	HandshakesInFlight, HandshakesWaiting int
	// Pending are the connections in their prologue now, by stage:
	// "silent" (waiting for a PROXY header or a first byte) and
	// "client_hello" (a ClientHello begun, not complete). Both keys are
	// always present.
	Pending map[string]int
	// Rejected counts the conn_rejected events by reason: those before
	// TLS, which the Filter counts (ip_not_allowed, conn_limit,
	// proxy_header, handshake_limit, handshake_evicted, pending_evicted,
	// first_byte_timeout, client_hello_timeout, bad_client_hello), and
	// those after the handshake (no_alpn, session_limit). Every reason in
	// RejectReasons is present, zero or not.
	Rejected       map[string]uint64
	SessionsActive int
	StreamsActive  int64
	StreamsTotal   uint64
	StreamsRefused map[string]uint64 // by status name, every refusal status present
	// LimitHits counts the limits hit, by name: "handshakes" (a newcomer
	// found every slot taken: refused, or let in by an eviction), "pending"
	// (evictions from a full pending set), "sessions_per_identity",
	// "streams_per_session", "stream_rate", "memory_budget" (streams
	// refused or reset for the budget). (The per-address connection cap is
	// the Filter's: Rejected["conn_limit"].)
	LimitHits map[string]uint64
	// Violations counts sessions ended by the frame guard, by kind (every
	// mux.ViolationKinds entry, zero included).
	Violations map[string]uint64
	// MemoryHeld and MemoryBudget are the bytes all sessions' streams and
	// copy buffers hold, and the bound on them.
	MemoryHeld, MemoryBudget int64
	// HandshakeDuration is one successful handshake, from its complete
	// ClientHello (the prologue's waits are not in it); DialDuration is one
	// successful backend dial.
	HandshakeDuration, DialDuration Histogram
	// Routes are the counters of each route that carried a stream.
	Routes map[string]RouteStats
	// Exposes are the counters and live publications of each configured
	// expose (reverse tunnels), by name.
	Exposes map[string]ExposeStats
	// PublishRefused counts the publications refused, for any name.
	PublishRefused uint64
}

// Stats returns a snapshot of the counters; safe for concurrent use.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	n := len(s.sessions)
	s.mu.Unlock()
	silent, hello, _ := s.pending.counts()
	inFlight, waiting := s.slots.counts()
	st := Stats{
		HandshakesOK:       s.stats.handshakesOK.Load(),
		HandshakesFailed:   s.stats.handshakesFailed.Load(),
		HandshakeLimit:     s.stats.handshakeLimit.Load(),
		HandshakesEvicted:  s.stats.handshakesEvicted.Load(),
		HandshakesResumed:  s.stats.handshakesResumed.Load(),
		HandshakesInFlight: inFlight,
		HandshakesWaiting:  waiting,
		Pending:            map[string]int{stageSilent.String(): silent, stageHello.String(): hello},
		Rejected:           make(map[string]uint64),
		SessionsActive:     n,
		StreamsActive:      s.activeStreams.Load(),
		StreamsTotal:       s.stats.streamsTotal.Load(),
		StreamsRefused:     make(map[string]uint64),
		LimitHits: map[string]uint64{
			"handshakes":            s.stats.handshakeLimit.Load() + s.stats.handshakesEvicted.Load(),
			"pending":               s.stats.pendingEvicted.Load(),
			"sessions_per_identity": s.stats.limitSessions.Load(),
			"streams_per_session":   s.stats.limitStreams.Load(),
			"stream_rate":           s.stats.limitStreamRate.Load(),
			"memory_budget":         s.stats.limitBudget.Load(),
		},
		Violations:        make(map[string]uint64, len(s.stats.violations)),
		MemoryHeld:        s.memory.Held(),
		MemoryBudget:      s.memory.Limit(),
		HandshakeDuration: s.stats.handshakeTime.snapshot(),
		DialDuration:      s.stats.dialTime.snapshot(),
		Routes:            s.stats.routes.snapshot(),
		Exposes:           s.exposeStats(),
		PublishRefused:    s.stats.publishRefused.Load(),
	}
	for _, r := range RejectReasons {
		st.Rejected[r] = 0
	}
	maps.Copy(st.Rejected, s.cfg.Filter.Stats().Rejected)
	st.Rejected[ReasonNoALPN] = s.stats.noALPN.Load()
	st.Rejected[ReasonSessionLimit] = s.stats.limitSessions.Load()
	for i := range s.stats.refused {
		if i > 0 { // every refusal status, zero included
			st.StreamsRefused[wire.Status(i).String()] = s.stats.refused[i].Load()
		}
	}
	for k, v := range s.stats.violations {
		st.Violations[k] = v.Load()
	}
	return st
}

// RejectReasons are the reasons of every conn_rejected event a Server and
// its Filter log, for metrics that show each one from the start.
var RejectReasons = []string{
	netfilter.ReasonIPNotAllowed, netfilter.ReasonConnLimit, netfilter.ReasonProxyHeader,
	ReasonPendingEvicted, ReasonFirstByteTimeout, ReasonClientHelloTimeout, ReasonBadClientHello,
	ReasonHandshakeLimit, ReasonHandshakeEvicted, ReasonNoALPN, ReasonSessionLimit,
}

type counters struct {
	handshakesOK, handshakesFailed, handshakeLimit atomic.Uint64
	handshakesEvicted                              atomic.Uint64
	handshakesResumed                              atomic.Uint64
	pendingEvicted                                 atomic.Uint64
	noALPN                                         atomic.Uint64
	streamsTotal                                   atomic.Uint64
	refused                                        [6]atomic.Uint64 // by wire.Status
	limitSessions, limitStreams, limitStreamRate   atomic.Uint64
	limitBudget                                    atomic.Uint64
	publishRefused                                 atomic.Uint64
	violations                                     map[string]*atomic.Uint64 // by kind; made by New, then read-only
	handshakeTime, dialTime                        histogram
	routes                                         routeTable
}

// violation counts a session the guard ended, by kind.
func (c *counters) violation(kind string) {
	if v := c.violations[kind]; v != nil {
		v.Add(1)
	}
}
