package mux

import "sync/atomic"

// Default memory budgets. A session's budget bounds what one peer can make
// its end hold in stream receive buffers; the process budget bounds all
// sessions together. Both are far above what honest traffic keeps buffered
// (a stream's consumer reads as fast as its backend takes the bytes), and
// small enough for a container with half a gigabyte.
const (
	DefaultSessionBudget = 64 << 20
	DefaultProcessBudget = 256 << 20
)

// Budget is a bound on the bytes that peers can make sessions hold: data
// received on streams and not yet read by the application. A session's
// Budget usually has the process's Budget as its parent, so that a byte
// counts against both. Safe for concurrent use.
//
// Of the limit, at most half may be promised as receive windows beyond the
// initial 256 KiB every yamux stream starts with (see Session's window
// tuning); the other half is there for the initial windows of the streams,
// which the protocol grants without asking.
type Budget struct {
	limit  int64
	parent *Budget
	held   atomic.Int64 // bytes received and not yet read
	grown  atomic.Int64 // window promised beyond the initial window
	denied atomic.Uint64
}

// NewBudget returns a Budget of limit bytes under parent (nil for none). A
// limit <= 0 means no limit of its own (the parent's still applies).
func NewBudget(limit int64, parent *Budget) *Budget {
	return &Budget{limit: limit, parent: parent}
}

// Limit returns the budget's limit in bytes (<= 0: none of its own).
func (b *Budget) Limit() int64 { return b.limit }

// Held returns the bytes held against the budget now.
func (b *Budget) Held() int64 { return b.held.Load() }

// Denied returns how many times the budget refused bytes or window: the
// streams it made the guard refuse or reset, and the window growths it
// turned down.
func (b *Budget) Denied() uint64 { return b.denied.Load() }

// Take holds n more bytes if that keeps b and its parents within their
// limits, and reports whether it did. Free gives them back. The guard takes
// what streams receive; the copy loop (internal/pipe) its large buffers.
func (b *Budget) Take(n int64) bool { return b.add(heldBytes, n) }

func (b *Budget) Free(n int64) { b.sub(heldBytes, n) }

// grow promises n more bytes of window if the promised window stays within
// half of every limit, and reports whether it did.
func (b *Budget) grow(n int64) bool { return b.add(grownBytes, n) }

// shrink takes back n bytes of promised window.
func (b *Budget) shrink(n int64) { b.sub(grownBytes, n) }

// nearFull reports whether b or a parent holds three quarters of its limit
// or more: a new stream is then refused rather than admitted into a budget
// its initial window could overrun.
func (b *Budget) nearFull() bool {
	for x := b; x != nil; x = x.parent {
		if x.limit > 0 && x.held.Load() >= x.limit/4*3 {
			return true
		}
	}
	return false
}

// What a Budget counts: held bytes may use the whole limit, promised window
// half of it.
const (
	heldBytes = iota
	grownBytes
)

func (b *Budget) counter(kind int) (c *atomic.Int64, max int64) {
	if kind == heldBytes {
		return &b.held, b.limit
	}
	return &b.grown, b.limit / 2
}

// add adds n to the kind's counter at every level, and undoes it all if a
// level would pass its share of its limit.
func (b *Budget) add(kind int, n int64) bool {
	for x := b; x != nil; x = x.parent {
		c, max := x.counter(kind)
		if v := c.Add(n); x.limit > 0 && v > max {
			for y := b; ; y = y.parent {
				c, _ := y.counter(kind)
				c.Add(-n)
				if y == x {
					break
				}
			}
			x.denied.Add(1)
			return false
		}
	}
	return true
}

func (b *Budget) sub(kind int, n int64) {
	for x := b; x != nil; x = x.parent {
		c, _ := x.counter(kind)
		c.Add(-n)
	}
}
