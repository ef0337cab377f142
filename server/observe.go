package server

import (
	"sync"
	"sync/atomic"
	"time"
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
