package e2e

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestSoak runs random streams across 20 client sessions for
// TUNNEL_SOAK_DURATION (make soak: 10m; CI: 60s) with backend restarts and
// two certificate reloads. Every stream that completes must be intact; a
// stream may be cut only by a backend restart it overlapped; the server's
// RSS and goroutines must stay flat after warm-up.
func TestSoak(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("TUNNEL_SOAK_DURATION"))
	if err != nil || d <= 0 {
		t.Skip("soak: set TUNNEL_SOAK_DURATION (make soak runs it; .ci/run runs 60s)")
	}
	const clients, workers = 20, 32
	pk := pkiDir(t)
	backend := newRestartableEcho(t)
	srv := startProc(t, append(serverArgs(pk, "127.0.0.1:0", "echo="+backend.addr), "--admin", "127.0.0.1:0",
		"--log-level", "info")...)
	admin, addr := srv.adminAddr(t), srv.addr(t)
	var fwds []string
	for range clients {
		c := startProc(t, append(clientArgs(pk, addr, "echo"), "--log-level", "info")...)
		fwds = append(fwds, c.forwardAddr(t, "echo"))
	}

	start := time.Now()
	deadline := start.Add(d)
	var (
		streams, bytes, cut, bad atomic.Int64
		wg                       sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for seq := uint64(0); time.Now().Before(deadline); seq++ {
				fwd := fwds[rng.IntN(len(fwds))]
				size := int64(1) << (10 + rng.IntN(13)) // 1 KiB .. 4 MiB
				size += rng.Int64N(size)
				began := time.Now()
				complete, intact, err := echoTry(fwd, uint64(w)<<32|seq, size)
				switch {
				case complete && intact:
					streams.Add(1)
					bytes.Add(2 * size)
				case complete:
					bad.Add(1)
					t.Errorf("worker %d: a %d-byte stream completed with wrong bytes", w, size)
				case backend.restartedDuring(began, time.Now()):
					cut.Add(1)
				default:
					bad.Add(1)
					t.Errorf("worker %d: a %d-byte stream was cut with no restart to blame: %v", w, size, err)
				}
				time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
			}
		})
	}

	// Faults and samples while the workers run.
	type sample struct{ rss, goroutines int }
	var samples []sample
	reloads := 0
	tick := time.NewTicker(d / 20)
	defer tick.Stop()
	for i := 1; time.Now().Before(deadline); i++ {
		<-tick.C
		if i%5 == 0 {
			backend.restart(t)
		}
		if (i == 7 || i == 14) && reloads < 2 {
			mustTunnel(t, "cert", "issue", pk.dir, "--server", "tunnel-srv", "--ip", "127.0.0.1", "--dns", "localhost", "--force")
			srv.signal(t, syscall.SIGHUP)
			reloads++
			srv.waitEventN(t, waitTimeout, reloads, "reload_applied", isEvent("reload_applied"))
		}
		samples = append(samples, sample{rss: rssKiB(t, srv.cmd.Process.Pid), goroutines: goroutines(t, admin)})
	}
	wg.Wait()
	t.Logf("soak %v: %d streams intact, %d MiB moved, %d cut by %d backend restarts, %d bad; %d certificate reloads",
		d, streams.Load(), bytes.Load()>>20, cut.Load(), backend.restarts.Load(), bad.Load(), reloads)
	if streams.Load() == 0 {
		t.Fatal("no stream completed")
	}
	if len(samples) >= 8 {
		// Compare the peaks of the second quarter (warmed up) and the last
		// quarter: under a steady load, growth beyond GC noise is a leak.
		peak := func(ss []sample) (p sample) {
			for _, s := range ss {
				p.rss, p.goroutines = max(p.rss, s.rss), max(p.goroutines, s.goroutines)
			}
			return p
		}
		q := len(samples) / 4
		warm, late := peak(samples[q:2*q]), peak(samples[len(samples)-q:])
		t.Logf("server peaks: RSS %d KiB warmed up, %d KiB at the end; goroutines %d, then %d",
			warm.rss, late.rss, warm.goroutines, late.goroutines)
		if late.rss > 2*warm.rss+16<<10 {
			t.Errorf("server RSS grew from %d KiB to %d KiB after warm-up", warm.rss, late.rss)
		}
		if late.goroutines > warm.goroutines*3/2+64 {
			t.Errorf("server goroutines grew from %d to %d after warm-up", warm.goroutines, late.goroutines)
		}
	}
}

// rssKiB reads VmRSS of a process.
func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// restartableEcho is an echo backend on a fixed address that can be
// restarted: every connection is cut and the port is closed for a moment.
type restartableEcho struct {
	addr     string
	mu       sync.Mutex
	ln       net.Listener
	conns    map[net.Conn]struct{}
	windows  [][2]time.Time // restart windows, with a margin
	restarts atomic.Int64
	wg       sync.WaitGroup
}

func newRestartableEcho(t *testing.T) *restartableEcho {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &restartableEcho{addr: ln.Addr().String(), conns: map[net.Conn]struct{}{}}
	e.serve(ln)
	t.Cleanup(func() {
		e.stop()
		e.wg.Wait()
	})
	return e
}

func (e *restartableEcho) serve(ln net.Listener) {
	e.mu.Lock()
	e.ln = ln
	e.mu.Unlock()
	e.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.conns[c] = struct{}{}
			e.mu.Unlock()
			e.wg.Go(func() {
				defer func() {
					e.mu.Lock()
					delete(e.conns, c)
					e.mu.Unlock()
					c.Close()
				}()
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						c.(*net.TCPConn).CloseWrite()
						return
					}
				}
			})
		}
	})
}

// stop closes the listener and cuts every connection.
func (e *restartableEcho) stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ln.Close()
	for c := range e.conns {
		c.Close()
	}
}

// restart cuts everything, waits, and listens again on the same address.
func (e *restartableEcho) restart(t *testing.T) {
	t.Helper()
	e.mu.Lock()
	e.windows = append(e.windows, [2]time.Time{time.Now().Add(-time.Second)}) // open-ended until it is back
	i := len(e.windows) - 1
	e.mu.Unlock()
	e.stop()
	time.Sleep(200 * time.Millisecond)
	ln, err := net.Listen("tcp", e.addr)
	if err != nil {
		t.Fatalf("backend restart on %s: %v", e.addr, err)
	}
	e.mu.Lock()
	e.windows[i][1] = time.Now().Add(time.Second)
	e.mu.Unlock()
	e.restarts.Add(1)
	e.serve(ln)
}

// restartedDuring reports whether a restart window overlaps [from, to].
func (e *restartableEcho) restartedDuring(from, to time.Time) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, w := range e.windows {
		if (w[1].IsZero() || from.Before(w[1])) && to.After(w[0]) {
			return true
		}
	}
	return false
}
