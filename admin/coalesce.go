package admin

import (
	"sync"
	"time"
)

// coalescer runs an action at most once per spacing. The first request
// after a quiet spell runs it at once; requests that come sooner join one
// run at the end of the spacing, however many they are. So a burst of
// requests costs two runs, and every request is followed by a run that
// starts after it. Safe for concurrent use; stop cancels a pending run.
type coalescer struct {
	run     func(requests int)
	spacing time.Duration

	mu      sync.Mutex
	last    time.Time   // when the last run started; guarded by mu
	pending int         // requests waiting for the next run; guarded by mu
	timer   *time.Timer // fires the pending run; guarded by mu
	stopped bool        // guarded by mu
	fires   sync.WaitGroup
}

// request asks for a run and reports whether it joined one already due.
func (c *coalescer) request() (joined bool) {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return true
	}
	if c.pending > 0 {
		c.pending++
		c.mu.Unlock()
		return true
	}
	now := time.Now()
	if wait := c.last.Add(c.spacing).Sub(now); wait > 0 {
		c.pending = 1
		c.fires.Add(1)
		c.timer = time.AfterFunc(wait, c.fire)
		c.mu.Unlock()
		return false
	}
	c.last = now
	c.mu.Unlock()
	c.run(1)
	return false
}

// fire runs the pending requests' run.
func (c *coalescer) fire() {
	defer c.fires.Done()
	c.mu.Lock()
	n := c.pending
	if c.stopped || n == 0 {
		c.mu.Unlock()
		return
	}
	c.pending, c.timer, c.last = 0, nil, time.Now()
	c.mu.Unlock()
	c.run(n)
}

// stop cancels a pending run and waits for one already firing; later
// requests run nothing.
func (c *coalescer) stop() {
	c.mu.Lock()
	c.stopped = true
	if c.timer != nil && c.timer.Stop() {
		c.fires.Done() // it will never fire
	}
	c.mu.Unlock()
	c.fires.Wait()
}
