package e2e

import (
	"crypto/sha256"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// liveEcho is a paced transfer through an echo route that goes on until it
// is finished: it shows whether a session carried on across an event (a
// rotation, a reload) or was cut by it.
type liveEcho struct {
	c    *net.TCPConn
	stop chan struct{}
	wg   sync.WaitGroup

	sent     [32]byte // set by the writer before wg is done
	sentN    int64
	got      [32]byte
	gotN     int64
	writeErr error
	readErr  error
}

// startLiveEcho dials the forward addr and starts sending seed's bytes,
// 32 KiB every 20 ms (about 1.6 MB/s), reading the echo as it comes.
func startLiveEcho(t *testing.T, addr string, seed uint64) *liveEcho {
	t.Helper()
	l := &liveEcho{c: dialLocal(t, addr), stop: make(chan struct{})}
	l.c.SetDeadline(time.Now().Add(10 * time.Minute)) // the test's own bound ends it sooner
	r := randReader(seed, 1<<40)
	l.wg.Go(func() {
		h := sha256.New()
		buf := make([]byte, 32<<10)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-l.stop:
				l.sent = [32]byte(h.Sum(nil))
				l.c.CloseWrite()
				return
			case <-tick.C:
			}
			n, _ := io.ReadFull(r, buf)
			h.Write(buf[:n])
			if _, err := l.c.Write(buf[:n]); err != nil {
				l.writeErr = err
				l.sent = [32]byte(h.Sum(nil))
				return
			}
			l.sentN += int64(n)
		}
	})
	l.wg.Go(func() { l.got, l.gotN, l.readErr = recvHashed(l.c) })
	t.Cleanup(func() { l.c.Close() })
	return l
}

// finish stops sending, waits for the echo's end (at most waitTimeout) and
// reports how many bytes came back and whether they are exactly those
// sent.
func (l *liveEcho) finish() (n int64, intact bool, err error) {
	close(l.stop)
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		l.c.Close()
		<-done
	}
	err = l.writeErr
	if err == nil {
		err = l.readErr
	}
	return l.gotN, err == nil && l.gotN == l.sentN && l.got == l.sent, err
}
