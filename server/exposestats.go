package server

import (
	"maps"
	"sort"
	"sync/atomic"
	"time"

	"github.com/tunnel-dev/tunnel/internal/wire"
	"github.com/tunnel-dev/tunnel/trust"
)

// exposeCounters are one expose's live counters.
type exposeCounters struct {
	inbound   atomic.Uint64 // connections past the filter
	active    atomic.Int64  // being carried, or looking for a publisher
	streams   atomic.Uint64 // carried to a publisher's target
	in, out   atomic.Uint64
	refusals  [6]atomic.Uint64 // publishers' refusals, by wire.Status (3 also counts a stream that failed before its status)
	published atomic.Uint64    // publications that went live
}

func (c *exposeCounters) carried(in, out int64) {
	c.streams.Add(1)
	c.in.Add(uint64(max(in, 0)))
	c.out.Add(uint64(max(out, 0)))
}

func (c *exposeCounters) refusal(code wire.Status) {
	if int(code) < len(c.refusals) {
		c.refusals[code].Add(1)
	} else {
		c.refusals[wire.StatusBackendUnreachable].Add(1)
	}
}

// ExposeStats are one expose's counters and its live publications.
type ExposeStats struct {
	// Publishers are the live publications of the name, oldest first.
	Publishers []PublisherStats
	// Inbound counts the connections its listener accepted past the
	// allowlist and the per-address cap; Active those being carried now.
	Inbound uint64
	Active  int64
	// Streams counts the inbound connections carried to a publisher's
	// target; BytesIn the bytes toward it, BytesOut back.
	Streams           uint64
	BytesIn, BytesOut uint64
	// Rejected counts the inbound connections reset, by reason: every
	// reason of ExposeRejectReasons, zero included.
	Rejected map[string]uint64
	// Refused counts the publishers' refusals of an inbound connection (the
	// next publisher was tried), by status name: unknown_route,
	// backend_unreachable (also a stream that failed before its status),
	// over_limit, bad_header.
	Refused map[string]uint64
	// PublishesAccepted counts the publications that went live.
	PublishesAccepted uint64
}

// PublisherStats describe one live publication, for `tunnel status`.
type PublisherStats struct {
	SessionID     string // the publishing session's session_id (tunnel status --close takes it)
	Identity      trust.Identity
	Addr          string // the publishing session's client address
	Since         time.Time
	StreamsActive int64
	StreamsTotal  uint64
}

// exposeStats returns the counters of every configured expose.
func (s *Server) exposeStats() map[string]ExposeStats {
	out := make(map[string]ExposeStats, len(s.exposes))
	for name, x := range s.exposes {
		st := ExposeStats{
			Inbound: x.stats.inbound.Load(), Active: x.stats.active.Load(), Streams: x.stats.streams.Load(),
			BytesIn: x.stats.in.Load(), BytesOut: x.stats.out.Load(), PublishesAccepted: x.stats.published.Load(),
			Rejected: make(map[string]uint64, len(ExposeRejectReasons)), Refused: map[string]uint64{},
		}
		for _, r := range ExposeRejectReasons {
			st.Rejected[r] = 0
		}
		maps.Copy(st.Rejected, x.filter.Stats().Rejected)
		for _, code := range []wire.Status{wire.StatusUnknownRoute, wire.StatusBackendUnreachable, wire.StatusOverLimit, wire.StatusBadHeader} {
			st.Refused[code.String()] = x.stats.refusals[code].Load()
		}
		for _, p := range s.pubs.of(name) {
			st.Publishers = append(st.Publishers, PublisherStats{
				SessionID: p.ss.id, Identity: p.ss.peer.Identity, Addr: p.ss.addr, Since: p.since,
				StreamsActive: p.active.Load(), StreamsTotal: p.total.Load(),
			})
		}
		sort.Slice(st.Publishers, func(i, j int) bool { return st.Publishers[i].Since.Before(st.Publishers[j].Since) })
		out[name] = st
	}
	return out
}

// ExposesDown returns, for each configured expose, nil if a client
// publishes it now, or why it is down: what /readyz reports per expose.
func (s *Server) ExposesDown() map[string]error {
	out := make(map[string]error, len(s.exposes))
	for name := range s.exposes {
		if _, ok := s.policy.Load().exposes[name]; !ok {
			out[name] = errExposeRemoved
		} else if len(s.pubs.of(name)) == 0 {
			out[name] = errNoPublisher
		} else {
			out[name] = nil
		}
	}
	return out
}
