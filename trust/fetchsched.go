package trust

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/logthrottle"
)

// fetchSched is what the CRL store and the OCSP store share: the goroutine
// that starts due fetches, its wake-up, the context that aborts fetches in
// flight, the concurrency caps (maxConcurrentFetches at once, one per host)
// and the counters of cap hits. A store embeds it and guards busy and
// active with its own mutex.
type fetchSched struct {
	busy   map[string]bool // hosts with a fetch in flight; guarded by the store's mu
	active int             // fetches in flight; guarded by the store's mu

	wake   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	limitHits sync.Map // limit name -> *atomic.Uint64
	limitLog  *logthrottle.Throttle[string]
}

func newFetchSched() fetchSched {
	ctx, cancel := context.WithCancel(context.Background())
	return fetchSched{busy: map[string]bool{}, wake: make(chan struct{}, 1), ctx: ctx, cancel: cancel,
		limitLog: &logthrottle.Throttle[string]{Interval: limitLogInterval, Max: 16}}
}

// kick wakes the loop; wake-ups coalesce.
func (f *fetchSched) kick() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// loop runs startDue, which starts the due fetches it may and returns how
// long to sleep, until the context ends. The store runs it on f.wg.
func (f *fetchSched) loop(startDue func() time.Duration) {
	defer f.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		timer.Reset(startDue())
		select {
		case <-f.ctx.Done():
			return
		case <-f.wake:
		case <-timer.C:
		}
	}
}

// mayStartLocked reports whether a fetch to host may start now.
func (f *fetchSched) mayStartLocked(host string) bool {
	return f.active < maxConcurrentFetches && !f.busy[host]
}

// startedLocked and endedLocked count a fetch to host in and out.
func (f *fetchSched) startedLocked(host string) {
	f.busy[host] = true
	f.active++
}

func (f *fetchSched) endedLocked(host string) {
	delete(f.busy, host)
	f.active--
}

// limitHit counts a cap hit and logs msg at most once a minute per cap.
func (f *fetchSched) limitHit(log logrus.FieldLogger, limit, raw, msg string) {
	v, _ := f.limitHits.LoadOrStore(limit, new(atomic.Uint64))
	n := v.(*atomic.Uint64).Add(1)
	if _, _, ok := f.limitLog.Hit(limit); !ok {
		return
	}
	log.WithFields(logrus.Fields{audit.Event: audit.CRLLimit, audit.Limit: limit, audit.URL: truncate(raw, 200),
		audit.Count: n}).Warn(msg)
}

// limitCounts returns the cap hits by cap name.
func (f *fetchSched) limitCounts() map[string]uint64 {
	out := map[string]uint64{}
	f.limitHits.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
	return out
}
