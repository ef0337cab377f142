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

// urlRefusals remembers the URLs a store will never fetch: precheck's
// verdict, which is the same each time, so a certificate that names one
// again costs a lookup, not a parse and a log line. It forgets the least
// recently used URL when full. Guarded by its store's mu.
type urlRefusals struct {
	seen    *lru[string, string] // URL -> reason
	refused atomic.Uint64        // URLs the URL checks and the SSRF guard refused (not a scheme we do not fetch)
}

func newURLRefusals(max int) urlRefusals {
	return urlRefusals{seen: newLRU[string, string](max)}
}

// urlKind is how a store names its URLs in its log lines.
type urlKind struct {
	event      string // of the warning for a URL the checks refused
	refused    string // its message
	notFetched string // the message for a scheme we do not fetch (ldap://, file://: legal in certificates)
	forgotten  string // the limit line when the table forgets one
}

// refuse remembers that raw is refused for reason (err says why, for a
// refused URL), counts it and logs it once, as kind names it.
func (r *urlRefusals) refuse(f *fetchSched, log logrus.FieldLogger, kind urlKind, raw, reason string, err error) {
	if r.seen.add(raw, reason) {
		f.limitHit(log, LimitSeenURLs, raw, kind.forgotten)
	}
	if reason == ReasonURLRefused {
		r.refused.Add(1)
		log.WithFields(logrus.Fields{audit.Event: kind.event, audit.URL: truncate(raw, 200),
			audit.Reason: reason, audit.Error: err.Error()}).Warn(kind.refused)
		return
	}
	log.WithFields(logrus.Fields{audit.URL: truncate(raw, 200), audit.Reason: reason}).Info(kind.notFetched)
}
