package e2e

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// faultPair is a server, a fault proxy in front of it, and a client dialling
// through the proxy with a short keepalive, so faults show quickly.
func faultPair(t *testing.T, routes ...string) (srv *proc, fp *faultProxy, cli *proc) {
	t.Helper()
	pk := pkiDir(t)
	srv = startProc(t, append(serverArgs(pk, "127.0.0.1:0", routes...), "--admin", "127.0.0.1:0")...)
	fp = startFaultProxy(t, srv.addr(t))
	var names []string
	for _, r := range routes {
		names = append(names, r[:indexByte(r, '=')])
	}
	cli = startProc(t, append(clientArgs(pk, fp.addr(), names...), "--keepalive", "500ms", "--keepalive-timeout", "1s")...)
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	return srv, fp, cli
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return len(s)
}

// echoTry sends n bytes from seed through addr and reports whether the echo
// came back complete, and if so whether it was intact. It never fails the
// test: a stream cut by a fault is an expected outcome.
func echoTry(addr string, seed uint64, n int64) (complete, intact bool, err error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return false, false, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitTimeout))
	var (
		sent [32]byte
		werr error
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		sent, _, werr = sendHashed(c, seed, n)
		c.(*net.TCPConn).CloseWrite()
	})
	got, m, rerr := recvHashed(c)
	wg.Wait()
	if m != n {
		return false, false, fmt.Errorf("got %d of %d bytes (write error %v, read error %v)", m, n, werr, rerr)
	}
	return true, got == sent, nil
}

func TestFaultLatencyBandwidthSlicer(t *testing.T) {
	t.Parallel()
	_, fp, cli := faultPair(t, "echo="+echoBackend(t))
	fwd := cli.forwardAddr(t, "echo")
	for _, tt := range []struct {
		name      string
		latency   time.Duration
		bw, slice int
		size      int64
		seed      uint64
	}{
		{"50 ms RTT, 4 MB/s", 25 * time.Millisecond, 4 << 20, 0, 1 << 20, 11},
		{"slicer: 1 to 7 bytes per write", 0, 0, 7, 256 << 10, 12},
		{"latency and slicer", 10 * time.Millisecond, 0, 3, 64 << 10, 13},
	} {
		fp.set(tt.latency, tt.bw, tt.slice)
		start := time.Now()
		echoCheck(t, fwd, tt.seed, tt.size)
		t.Logf("%s: %d KiB echoed intact in %v", tt.name, tt.size>>10, time.Since(start).Round(time.Millisecond))
	}
}

// TestFaultStalledLink: a link that goes silent (no bytes, no FIN) is
// noticed within the keepalive timeout; the client redials and new streams
// work.
func TestFaultStalledLink(t *testing.T) {
	t.Parallel()
	_, fp, cli := faultPair(t, "echo="+echoBackend(t))
	start := time.Now()
	fp.stall()
	cli.waitEvent(t, waitTimeout, "session_closed after the stall", isEvent("session_closed"))
	noticed := time.Since(start)
	t.Logf("stalled link noticed after %v (keepalive 500ms, timeout 1s)", noticed.Round(time.Millisecond))
	if noticed > 8*time.Second {
		t.Errorf("stall noticed after %v, want within a few times keepalive+timeout (1.5 s)", noticed)
	}
	cli.waitEventN(t, waitTimeout, 2, "a second session", isEvent("session_opened"))
	echoCheck(t, cli.forwardAddr(t, "echo"), 21, 1<<20)
}

// TestFaultResetMidTransfer: resets in the middle of transfers cut streams,
// but no stream completes with wrong bytes; the client reconnects and new
// streams work.
func TestFaultResetMidTransfer(t *testing.T) {
	t.Parallel()
	_, fp, cli := faultPair(t, "echo="+echoBackend(t))
	fwd := cli.forwardAddr(t, "echo")
	fp.set(0, 8<<20, 0) // slow enough that the reset lands mid-transfer
	type result struct {
		complete, intact bool
		err              error
	}
	results := make(chan result, 4)
	for i := range 4 {
		go func() {
			c, ok, err := echoTry(fwd, uint64(30+i), 8<<20)
			results <- result{c, ok, err}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	fp.set(0, 0, 0)
	if n := fp.reset(); n == 0 {
		t.Fatal("no connection to reset")
	}
	cut := 0
	for range 4 {
		r := <-results
		if r.complete && !r.intact {
			t.Error("a stream completed with corrupted bytes")
		}
		if !r.complete {
			cut++
		}
	}
	t.Logf("%d of 4 streams cut by the reset", cut)
	if cut == 0 {
		t.Error("the reset cut no stream: the test did not test anything")
	}
	cli.waitEventN(t, waitTimeout, 2, "a second session", isEvent("session_opened"))
	echoCheck(t, fwd, 40, 1<<20)
}

// TestBackendFlaps: a backend that goes down and up gives clean
// backend_unreachable refusals while down and works again when up.
func TestBackendFlaps(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	pk := pkiDir(t)
	_, cli := tunnelPair(t, pk, map[string]string{"flap": addr})
	fwd := cli.forwardAddr(t, "flap")
	up := func() (stop func()) {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("re-listen on %s: %v", addr, err)
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				wg.Go(func() {
					defer c.Close()
					buf := make([]byte, 32<<10)
					for {
						n, err := c.Read(buf)
						if n > 0 {
							c.Write(buf[:n])
						}
						if err != nil {
							c.(*net.TCPConn).CloseWrite()
							return
						}
					}
				})
			}
		})
		return func() { l.Close(); wg.Wait() }
	}
	refused := func(round int) {
		c := dialLocal(t, fwd)
		c.Write([]byte("x"))
		assertClosed(t, c, waitTimeout)
		cli.waitEventN(t, waitTimeout, round, "stream_refused backend_unreachable",
			isEvent("stream_refused", "status", "backend_unreachable"))
	}
	refused(1)
	stop := up()
	echoCheck(t, fwd, 50, 256<<10)
	stop()
	refused(2)
	stop = up()
	echoCheck(t, fwd, 51, 256<<10)
	stop()
}

// procFDs counts the open file descriptors of a process.
func procFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

var goroutinesRe = regexp.MustCompile(`(?m)^go_goroutines (\d+)`)

// goroutines reads go_goroutines from a process's admin /metrics.
func goroutines(t *testing.T, admin string) int {
	t.Helper()
	_, body := httpDo(t, "GET", "http://"+admin+"/metrics")
	m := goroutinesRe.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no go_goroutines in /metrics")
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// settles polls f until it returns at most want, or fails after d.
func settles(t *testing.T, what string, want int, d time.Duration, f func() int) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := f()
		if got <= want {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: %d, want at most %d (back to the baseline)", what, got, want)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestNoLeakInSurvivor: the server survives a client killed with SIGKILL
// mid-stream and backend restarts without keeping file descriptors or
// goroutines.
func TestNoLeakInSurvivor(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	echo := echoBackend(t)
	srv := startProc(t, append(serverArgs(pk, "127.0.0.1:0", "echo="+echo), "--admin", "127.0.0.1:0")...)
	admin := srv.adminAddr(t)
	addr := srv.addr(t)
	// Warm up: one client session with a stream, then gone.
	warm := startProc(t, clientArgs(pk, addr, "echo")...)
	echoCheck(t, warm.forwardAddr(t, "echo"), 60, 1<<16)
	warm.signal(t, syscall.SIGTERM)
	warm.wait(t, waitTimeout)
	srv.waitEvent(t, waitTimeout, "warm-up session closed", isEvent("session_closed"))
	baseFDs, baseG := procFDs(t, srv.cmd.Process.Pid), goroutines(t, admin)

	for round := range 3 {
		cli := startProc(t, clientArgs(pk, addr, "echo")...)
		fwd := cli.forwardAddr(t, "echo")
		var conns []net.Conn
		for i := range 5 {
			c := dialLocal(t, fwd)
			c.Write([]byte{byte(i)})
			conns = append(conns, c)
		}
		for _, c := range conns {
			c.SetReadDeadline(time.Now().Add(waitTimeout))
			if _, err := c.Read(make([]byte, 1)); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		cli.signal(t, syscall.SIGKILL) // mid-stream
		select {
		case <-cli.done:
		case <-time.After(waitTimeout):
			t.Fatal("killed client did not exit")
		}
		srv.waitEventN(t, waitTimeout, round+2, "session_closed of the killed client", isEvent("session_closed"))
	}
	settles(t, "server fds", baseFDs, 10*time.Second, func() int { return procFDs(t, srv.cmd.Process.Pid) })
	settles(t, "server goroutines", baseG, 10*time.Second, func() int { return goroutines(t, admin) })
	t.Logf("server after 3 killed clients: %d fds (baseline %d), %d goroutines (baseline %d)",
		procFDs(t, srv.cmd.Process.Pid), baseFDs, goroutines(t, admin), baseG)
}

// TestOneByteWrites: a peer that writes one byte at a time is neither
// starved nor turned into a flood of tiny frames. Its bytes arrive intact,
// alone and while a bulk stream shares its session (which also completes
// intact), and what crosses the wire stays a small multiple of the payload:
// one yamux frame and one TLS record per byte would be about 35 bytes on the
// wire per byte sent.
func TestOneByteWrites(t *testing.T) {
	t.Parallel()
	const n = 50_000
	got := make(chan hashResult, 2)
	sink := startBackend(t, func(c *net.TCPConn) {
		var r hashResult
		r.got, r.nGot, r.rerr = recvHashed(c)
		got <- r
	})
	_, fp, cli := faultPair(t, "sink="+sink, "echo="+echoBackend(t))
	sinkAddr, echoAddr := cli.forwardAddr(t, "sink"), cli.forwardAddr(t, "echo")

	// oneByOne writes n bytes from seed to the sink one Write each, then
	// checks what the backend received.
	oneByOne := func(seed uint64) (time.Duration, error) {
		c, err := net.DialTimeout("tcp", sinkAddr, 5*time.Second)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(waitTimeout))
		data, _ := io.ReadAll(randReader(seed, n))
		start := time.Now()
		for i := range data {
			if _, err := c.Write(data[i : i+1]); err != nil {
				return 0, fmt.Errorf("write %d: %w", i, err)
			}
		}
		c.(*net.TCPConn).CloseWrite()
		select {
		case r := <-got:
			if r.rerr != nil || r.nGot != n || r.got != sha256.Sum256(data) {
				return 0, fmt.Errorf("backend got %d bytes (sha256 %x, err %v), want %d intact", r.nGot, r.got[:8], r.rerr, n)
			}
		case <-time.After(waitTimeout):
			return 0, fmt.Errorf("the backend did not get EOF within %v", waitTimeout)
		}
		return time.Since(start), nil
	}

	before := fp.toServer.Load()
	took, err := oneByOne(41)
	if err != nil {
		t.Fatal(err)
	}
	wire := fp.toServer.Load() - before
	perByte := float64(wire) / n
	t.Logf("alone: %d one-byte writes delivered in %v; %d bytes on the wire, %.2f per byte", n, took.Round(time.Millisecond), wire, perByte)
	// Each read of the local socket takes all that has arrived and becomes
	// one frame, so a fast one-byte writer's bytes share frames (4-8 wire
	// bytes per byte measured here); a frame per write would be about 35.
	// No Nagle-like delay: it would cost interactive traffic latency.
	if perByte > 20 {
		t.Errorf("%.2f wire bytes per payload byte: one-byte writes went out as a flood of tiny frames", perByte)
	}

	var alongside error
	var wg sync.WaitGroup
	wg.Go(func() { took, alongside = oneByOne(42) })
	start := time.Now()
	echoCheck(t, echoAddr, 43, 32<<20)
	bulk := time.Since(start)
	wg.Wait()
	if alongside != nil {
		t.Fatalf("one-byte writer beside a bulk stream: %v", alongside)
	}
	t.Logf("beside a 32 MiB echo (done in %v): %d one-byte writes delivered in %v", bulk.Round(time.Millisecond), n, took.Round(time.Millisecond))
}
