// Package alive tells whether a long-running loop (the server's accept loop,
// the client's session keeper) is still turning: the loop promises when it
// will beat next, and a watcher (the systemd watchdog) checks the promise.
package alive

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tunnel-dev/tunnel/internal/testhook"
)

// Errors of Signal.Check for a loop that never beat or has ended.
var (
	ErrNotStarted = errors.New("alive: the loop has not started")
	ErrStopped    = errors.New("alive: the loop has ended")
)

// stopped is the due time of a Signal whose loop ended.
const stopped = -1

// Signal is one loop's liveness. The loop calls Beat each time it runs,
// saying how long it may take until it runs again; Check reports whether
// that promise still holds. The zero value is a loop that has not started.
// Safe for concurrent use: one loop beats, any goroutine checks.
type Signal struct {
	// Name names the loop in Check's errors ("accept loop").
	Name string

	due atomic.Int64 // unix nanoseconds by which the next Beat is due; 0 before the first; stopped after Stop
}

// Beat records that the loop ran now and will run again within d. It is
// called from the loop's own goroutine, so a loop stuck anywhere stops
// beating. In the test build it blocks while the file TUNNEL_TEST_WEDGE
// names exists, so the tests can watch a wedged loop's watchdog pings stop.
func (s *Signal) Beat(d time.Duration) {
	testhook.Hold("TUNNEL_TEST_WEDGE")
	s.due.Store(time.Now().Add(d).UnixNano())
}

// Stop records that the loop ended for good.
func (s *Signal) Stop() { s.due.Store(stopped) }

// Check returns nil while the loop keeps its last promise at now, or why
// not: ErrNotStarted, ErrStopped, or how late its beat is.
func (s *Signal) Check(now time.Time) error {
	switch due := s.due.Load(); {
	case due == 0:
		return fmt.Errorf("%s: %w", s.Name, ErrNotStarted)
	case due == stopped:
		return fmt.Errorf("%s: %w", s.Name, ErrStopped)
	case now.UnixNano() > due:
		return fmt.Errorf("alive: %s has not run for %v past its promise", s.Name, now.Sub(time.Unix(0, due)).Round(time.Millisecond))
	}
	return nil
}
