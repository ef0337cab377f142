package logthrottle_test

import (
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/logthrottle"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestThrottle(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	th := &logthrottle.Throttle[string]{Interval: 10 * time.Second, Max: 2, Now: c.now}
	hit := func(k string) (uint64, bool, bool) { return th.Hit(k) }
	if n, folded, log := hit("a"); !log || n != 1 || folded {
		t.Fatalf("first a: %d %v %v", n, folded, log)
	}
	for range 5 {
		if _, _, log := hit("a"); log {
			t.Fatal("a logged again within the interval")
		}
	}
	c.t = c.t.Add(10 * time.Second)
	if n, _, log := hit("a"); !log || n != 6 {
		t.Fatalf("a after the interval: count %d log %v, want 6 true", n, log)
	}
	hit("b")
	// The table (2) is full of live keys: c is folded into the shared slot.
	if _, folded, log := hit("c"); !folded || !log {
		t.Fatalf("c: folded %v log %v", folded, log)
	}
	if _, folded, log := hit("d"); !folded || log {
		t.Fatalf("d shares c's slot: folded %v log %v", folded, log)
	}
	if th.Len() != 2 {
		t.Fatalf("Len %d, want the bound 2", th.Len())
	}
	// Once a and b expire, new keys get their own slots again.
	c.t = c.t.Add(11 * time.Second)
	if _, folded, log := hit("e"); folded || !log {
		t.Fatalf("e after expiry: folded %v log %v", folded, log)
	}
}

// Flush reports the events that logged no line, once, and forgets them.
func TestFlush(t *testing.T) {
	now := time.Unix(1000, 0)
	th := &logthrottle.Throttle[string]{Interval: time.Minute, Max: 1, Now: func() time.Time { return now }}
	for range 3 {
		th.Hit("a") // one line, two suppressed
	}
	th.Hit("b") // the table is full: folded, a line
	th.Hit("b") // folded, suppressed
	got := map[string]uint64{}
	th.Flush(func(k string, folded bool, n uint64) {
		if folded {
			k = "(folded)"
		}
		got[k] = n
	})
	if len(got) != 2 || got["a"] != 2 || got["(folded)"] != 1 {
		t.Fatalf("Flush reported %v, want a: 2 and (folded): 1", got)
	}
	th.Flush(func(k string, _ bool, n uint64) { t.Errorf("second Flush reported %s: %d", k, n) })
}
