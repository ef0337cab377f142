// Package logthrottle keeps log lines about repeated events few: at most one
// line per key per interval, each saying how many events it stands for.
package logthrottle

import (
	"sync"
	"time"
)

// Throttle decides which events of a key get a log line. Its table of keys
// is bounded by Max: when it is full, expired keys are dropped, and if it is
// still full a new key is folded with all other such keys into one shared
// slot. Set the fields before first use; Hit is safe for concurrent use.
type Throttle[K comparable] struct {
	Interval time.Duration    // least time between two lines of one key
	Max      int              // bound of the key table
	Now      func() time.Time // the clock; nil means time.Now

	mu    sync.Mutex
	slots map[K]*slot
	other slot      // keys that found the table full
	sweep time.Time // no entry of slots expires before this time
}

// slot is one rate-limited stream of lines.
type slot struct {
	last       time.Time // when the last line was logged
	suppressed uint64    // events since then that logged nothing
}

// Hit records one event of key. It reports whether to log a line and, if
// so, how many events the line stands for (those suppressed since the last
// line, plus this one), and whether key was folded into the shared slot of
// keys that found the table full.
func (t *Throttle[K]) Hit(key K) (count uint64, folded, log bool) {
	now := time.Now
	if t.Now != nil {
		now = t.Now
	}
	at := now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.slots == nil {
		t.slots = make(map[K]*slot)
	}
	s, ok := t.slots[key]
	if !ok && len(t.slots) >= t.Max && !at.Before(t.sweep) {
		t.dropExpired(at)
	}
	if !ok && len(t.slots) < t.Max {
		s = &slot{}
		t.slots[key] = s
	}
	if s == nil {
		n, ok := t.other.hit(at, t.Interval)
		return n, true, ok
	}
	n, ok := s.hit(at, t.Interval)
	return n, false, ok
}

// Flush hands f, for each key with events that logged no line since its
// last one, how many, and forgets them; folded keys come as the zero key
// with folded set. Call it when the events stop (a session ends), so that
// no count goes unreported.
func (t *Throttle[K]) Flush(f func(key K, folded bool, count uint64)) {
	t.mu.Lock()
	type pending struct {
		key    K
		folded bool
		n      uint64
	}
	var out []pending
	for k, s := range t.slots {
		if s.suppressed > 0 {
			out = append(out, pending{k, false, s.suppressed})
			s.suppressed = 0
		}
	}
	if t.other.suppressed > 0 {
		var zero K
		out = append(out, pending{zero, true, t.other.suppressed})
		t.other.suppressed = 0
	}
	t.mu.Unlock()
	for _, p := range out {
		f(p.key, p.folded, p.n)
	}
}

// Len returns the number of keys in the table.
func (t *Throttle[K]) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.slots)
}

func (s *slot) hit(now time.Time, interval time.Duration) (uint64, bool) {
	if !s.last.IsZero() && now.Sub(s.last) < interval {
		s.suppressed++
		return 0, false
	}
	n := s.suppressed + 1
	s.last, s.suppressed = now, 0
	return n, true
}

// dropExpired removes the entries whose interval has passed and notes when
// the next one can expire, so a full table of live entries is not rescanned
// for every new key.
func (t *Throttle[K]) dropExpired(now time.Time) {
	var oldest time.Time
	for k, s := range t.slots {
		if now.Sub(s.last) >= t.Interval {
			delete(t.slots, k)
			continue
		}
		if oldest.IsZero() || s.last.Before(oldest) {
			oldest = s.last
		}
	}
	t.sweep = oldest.Add(t.Interval)
}
