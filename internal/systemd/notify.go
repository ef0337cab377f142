// Package systemd is how the process speaks to systemd: readiness, reload
// and stop notifications (sd_notify), the watchdog, and listening sockets
// passed by socket activation (LISTEN_FDS). Outside systemd the
// notifications do nothing and asking for a socket is an error naming what
// is missing.
package systemd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
)

// Notifier states: what systemd has been told.
const (
	stateStarting = iota
	stateReady
	stateReloading
	stateStopping
)

// Notifier sends sd_notify messages to the socket NOTIFY_SOCKET names,
// in an order systemd accepts: READY=1 once; then RELOADING=1 and READY=1
// around each reload; STOPPING=1 once, after which nothing more is sent
// (a reload or a watchdog ping then would confuse a unit that is stopping).
// A nil *Notifier (no NOTIFY_SOCKET) sends nothing. Safe for concurrent
// use.
type Notifier struct {
	log    logrus.FieldLogger
	socket string // NOTIFY_SOCKET, for the first failure's line

	mu     sync.Mutex
	state  int  // guarded by mu
	failed bool // a send failed and was logged; guarded by mu
}

// NewNotifier returns a Notifier for NOTIFY_SOCKET, or nil when it is unset
// (the process was not started by systemd as Type=notify). Failures to
// send are logged once on log.
func NewNotifier(log logrus.FieldLogger) *Notifier {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return nil
	}
	return &Notifier{log: log, socket: sock}
}

// send writes the lines as one datagram; n.mu is held.
func (n *Notifier) send(lines ...string) {
	msg := strings.Join(lines, "\n")
	if ok, err := daemon.SdNotify(false, msg); err != nil || !ok {
		if !n.failed {
			n.failed = true
			if err == nil {
				err = errors.New("NOTIFY_SOCKET is no longer set")
			}
			n.log.WithFields(logrus.Fields{audit.Error: err.Error(), audit.Path: n.socket}).
				Warn("cannot notify systemd; the unit may time out or be restarted by its watchdog")
		}
	}
}

// status is the STATUS= line of s, kept short and on one line.
func status(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 200 {
		s = s[:200]
	}
	return "STATUS=" + s
}

// Ready says that start-up is complete: every listener is bound and the
// revocation bootstrap is over. Only the first call sends.
func (n *Notifier) Ready(st string) {
	n.move(stateReady, func(s int) bool { return s == stateStarting }, "READY=1", status(st))
}

// Reloading says a reload begins, with the monotonic clock reading that
// Type=notify-reload matches against its reload request. It sends only
// after Ready and before Stopping; Reloaded must follow.
func (n *Notifier) Reloading(st string) {
	n.move(stateReloading, func(s int) bool { return s == stateReady },
		"RELOADING=1", strings.TrimSuffix(daemon.SdNotifyMonotonicUsec(), "\n"), status(st))
}

// Reloaded says the reload that Reloading announced is over, applied or
// rejected (the process runs on either way): READY=1 again.
func (n *Notifier) Reloaded(st string) {
	n.move(stateReady, func(s int) bool { return s == stateReloading }, "READY=1", status(st))
}

// Stopping says the process is shutting down (draining). Only the first
// call sends; nothing is sent after it.
func (n *Notifier) Stopping(st string) {
	n.move(stateStopping, func(s int) bool { return s != stateStopping }, "STOPPING=1", status(st))
}

// move enters state to and sends lines if the state now is one that from
// allows; otherwise it does nothing, so systemd never sees a message out of
// order. A nil Notifier does nothing.
func (n *Notifier) move(to int, from func(int) bool, lines ...string) {
	if n == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if !from(n.state) {
		return
	}
	n.state = to
	n.send(lines...)
}

// Status updates the STATUS= line, unless the process is stopping.
func (n *Notifier) Status(st string) {
	if n == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.state == stateStopping {
		return
	}
	n.send(status(st))
}

// stopping reports whether STOPPING=1 was sent.
func (n *Notifier) stopping() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.state == stateStopping
}

// ping sends WATCHDOG=1 unless the process is starting or stopping, and
// reports whether it did.
func (n *Notifier) ping() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.state != stateReady && n.state != stateReloading {
		return false
	}
	n.send("WATCHDOG=1")
	return true
}

// WatchdogInterval returns the watchdog interval systemd set for this
// process (WATCHDOG_USEC, when WATCHDOG_PID is unset or ours), or 0 when
// there is none. A value that is not a positive number is an error.
func WatchdogInterval() (time.Duration, error) {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return 0, fmt.Errorf("systemd: WATCHDOG_USEC=%q: %w", os.Getenv("WATCHDOG_USEC"), err)
	}
	return d, nil
}

// Watchdog sends WATCHDOG=1 every interval/2 (the first after interval/2)
// while alive returns nil, until ctx ends. When alive fails it sends nothing, so that systemd restarts a
// process whose main loop is stuck, and logs watchdog_withheld once with
// the reason (and watchdog_resumed if the loop recovers). It returns when
// ctx ends or Stopping was called (a drain ends the loops on purpose). A
// nil Notifier or a zero interval returns at once.
func (n *Notifier) Watchdog(ctx context.Context, interval time.Duration, alive func() error) {
	if n == nil || interval <= 0 {
		return
	}
	tick := time.NewTicker(interval / 2)
	defer tick.Stop()
	var withheld error
	for {
		// The first look comes one tick after start, when the loops
		// started just after it have had time to beat.
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if n.stopping() {
			return // the loops end on purpose now; systemd no longer watches
		}
		if err := alive(); err != nil {
			if withheld == nil {
				n.log.WithFields(logrus.Fields{audit.Event: audit.WatchdogWithheld, audit.Error: err.Error(),
					"watchdog_ms": interval.Milliseconds()}).
					Error("not pinging the systemd watchdog: a main loop is not running; systemd restarts the process")
			}
			withheld = err
		} else {
			if withheld != nil {
				n.log.WithField(audit.Event, audit.WatchdogResumed).Warn("the main loops run again; pinging the systemd watchdog")
			}
			withheld = nil
			n.ping()
		}
	}
}
