package e2e

import (
	"crypto/sha256"
	"errors"
	"hash"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// dialFrom opens a TCP connection to addr from the local address src.
func dialFrom(src, addr string) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// openMany opens n connections from src to addr, n at a time in workers,
// sends each one prefix (if any), and returns those that the server did not
// close at once. The caller closes them.
func openMany(t *testing.T, src, addr string, n int, prefix []byte) []*net.TCPConn {
	t.Helper()
	var (
		mu       sync.Mutex
		conns    []*net.TCPConn
		wg       sync.WaitGroup
		next     atomic.Int64
		dialErrs atomic.Int64
		lastErr  atomic.Value
	)
	for range 32 {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				c, err := dialFrom(src, addr)
				if err != nil {
					dialErrs.Add(1)
					lastErr.Store(err.Error())
					continue
				}
				if prefix != nil {
					c.Write(prefix)
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if n := dialErrs.Load(); n > 0 {
		t.Logf("%d of %d connections from %s were reset before connect returned: %v", n, n+int64(len(conns)), src, lastErr.Load())
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return conns
}

// halfClientHello is the start of a TLS handshake record that promises 512
// bytes and delivers 60: a server waits for the rest until its deadline.
var halfClientHello = append([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}, make([]byte, 49)...)

// TestSlowloris: 2 000 silent connections and 500 half ClientHellos from
// two allowed addresses do not keep a real client out: it connects and
// moves bytes at once; the idle ones are closed at the prologue's deadlines
// (first byte, rest of the ClientHello). TestDistributedSlowloris spreads
// the attack over 70 addresses.
func TestSlowloris(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	args := withFlag(serverArgs(pk, "127.0.0.1:0", "echo="+echoBackend(t)), "--allow", "127.0.0.0/8")
	srv := startProc(t, append(args, "--first-byte-timeout", "2s", "--client-hello-timeout", "2s", "--log-level", "info")...)
	addr := srv.addr(t)

	silent := openMany(t, "127.0.0.3", addr, 2000, nil)
	half := openMany(t, "127.0.0.4", addr, 500, halfClientHello)
	t.Logf("%d silent and %d half-handshake connections outlived connect", len(silent), len(half))

	start := time.Now()
	cli := startProc(t, append(clientArgs(pk, addr, "echo"), "--source", "127.0.0.2")...)
	cli.waitEvent(t, waitTimeout, "session_opened under slowloris", isEvent("session_opened"))
	echoCheck(t, cli.forwardAddr(t, "echo"), 70, 1<<20)
	took := time.Since(start)
	t.Logf("a real client connected and echoed 1 MiB in %v under slowloris (process start included)", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("the real client took %v, want about a second", took)
	}

	// Each attacking address holds at most --max-conns-per-addr (64)
	// connections; the rest were reset at once. The held ones end at the
	// 2 s deadlines.
	closedBy := func(conns []*net.TCPConn, d time.Duration) (closed int) {
		var n atomic.Int64
		var wg sync.WaitGroup
		for _, c := range conns {
			wg.Go(func() {
				c.SetReadDeadline(time.Now().Add(d))
				_, err := io.Copy(io.Discard, c)
				var ne net.Error
				if !(errors.As(err, &ne) && ne.Timeout()) {
					n.Add(1)
				}
			})
		}
		wg.Wait()
		return int(n.Load())
	}
	if n := closedBy(append(silent, half...), 8*time.Second); n != len(silent)+len(half) {
		t.Errorf("%d of %d attacking connections still open 8 s after 2 s deadlines", len(silent)+len(half)-n, len(silent)+len(half))
	}
	srv.waitEvent(t, waitTimeout, "conn_rejected conn_limit", isEvent("conn_rejected", "reason", "conn_limit"))
	lines := len(srv.matching(func(map[string]any) bool { return true }))
	t.Logf("server wrote %d log lines for 2 500 abusive connections", lines)
	if lines > 400 {
		t.Errorf("server wrote %d log lines under slowloris, want a few hundred at most", lines)
	}
}

// TestRejectedFlood: 20 000 connections from a non-allowed address during a
// 1 GiB transfer from an allowed one: the transfer completes intact,
// the log stays short, and its throughput is reported beside a quiet run's
// over the same session (a figure, not an assertion).
func TestRejectedFlood(t *testing.T) {
	t.Parallel()
	const (
		size  = 1 << 30
		flood = 20000
	)
	pk := pkiDir(t)
	backend, res := sourceSinkBackend(t, 80, 0)
	srv := startProc(t, append(serverArgs(pk, "127.0.0.1:0", "sink="+backend), "--log-level", "info")...)
	addr := srv.addr(t)
	cli := startProc(t, clientArgs(pk, addr, "sink")...)
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	fwd := cli.forwardAddr(t, "sink")

	// transfer sends size bytes from seed to the sink and checks them.
	transfer := func(seed uint64) float64 {
		start := time.Now()
		c := dialLocal(t, fwd)
		c.SetDeadline(time.Now().Add(5 * time.Minute))
		sent, n, err := sendHashed(c, seed, size)
		c.CloseWrite()
		io.Copy(io.Discard, c)
		took := time.Since(start)
		r := <-res
		if err != nil || n != size || r.nGot != size || r.got != sent {
			t.Fatalf("transfer: sent %d (%v), backend got %d, sha256 equal %v", n, err, r.nGot, r.got == sent)
		}
		return float64(size) / took.Seconds() / 1e6
	}
	quiet := transfer(81)

	// The flood starts with the transfer and stops at flood connections;
	// the transfer outlasts it here (the log says how many fell within).
	var flooded atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for flooded.Load() < flood {
				if c, err := dialFrom("127.0.0.5", addr); err == nil {
					c.Close()
				}
				flooded.Add(1)
			}
		})
	}
	loud := transfer(82)
	during := flooded.Load()
	wg.Wait()
	t.Logf("1 GiB intact: %.0f MB/s quiet, %.0f MB/s during %d rejected connections (%.2fx); %d in all", quiet, loud, during, loud/quiet, flooded.Load())
	rejected := srv.matching(isEvent("conn_rejected"))
	if len(rejected) == 0 || len(rejected) > 300 {
		t.Errorf("%d conn_rejected lines for %d rejected connections, want at least one and at most a few hundred", len(rejected), flooded.Load())
	}
}

// TestStreamAbuse: a client that opens streams past the cap gets "over a
// limit" for the excess, one that opens streams and never reads only
// stalls its own streams, and another client's session works throughout.
func TestStreamAbuse(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	echo := echoBackend(t)
	srv := startProc(t, append(serverArgs(pk, "127.0.0.1:0", "echo="+echo), "--max-streams", "16", "--admin", "127.0.0.1:0")...)
	addr := srv.addr(t)
	abuser := startProc(t, clientArgs(pk, addr, "echo")...)
	good := startProc(t, clientArgs(pk, addr, "echo")...)
	abuser.waitEvent(t, waitTimeout, "abuser session", isEvent("session_opened"))
	good.waitEvent(t, waitTimeout, "good session", isEvent("session_opened"))
	fwd := abuser.forwardAddr(t, "echo")

	// 16 streams that write 1 MiB each and never read: the echo fills
	// their windows and then waits; nothing else should notice.
	chunk := make([]byte, 64<<10)
	var stuck []*net.TCPConn
	for range 16 {
		c := dialLocal(t, fwd)
		c.SetWriteDeadline(time.Now().Add(3 * time.Second))
		for range 16 {
			if _, err := c.Write(chunk); err != nil {
				break // the window is full: the writer is stalled, as intended
			}
		}
		stuck = append(stuck, c)
	}
	// The client opens streams asynchronously: wait until all 16 hold slots.
	waitMetrics(t, "http://"+srv.adminAddr(t), "tunnel_streams_active 16")
	// Past the cap: refused.
	for range 8 {
		c := dialLocal(t, fwd)
		c.Write([]byte("x"))
		assertClosed(t, c, waitTimeout)
	}
	abuser.waitEvent(t, waitTimeout, "over_limit refusal", isEvent("stream_refused", "status", "over_limit"))
	echoCheck(t, good.forwardAddr(t, "echo"), 90, 4<<20)
	rss := rssKiB(t, srv.cmd.Process.Pid)
	t.Logf("server RSS with 16 stalled never-reading streams: %d KiB", rss)
	if rss > 512<<10 {
		t.Errorf("server RSS %d KiB with 16 stalled streams: not bounded", rss)
	}
	waitMetrics(t, "http://"+srv.adminAddr(t), `tunnel_limit_hits_total{limit="streams_per_session"} 8`)
	for _, c := range stuck {
		c.Close()
	}
}

// TestStreamRateLimit: with --max-stream-rate set (it is off by default), a
// session opening streams faster than the rate, past a burst of
// --max-streams, gets "over a limit" for the excess, logged once per
// interval, and works again afterwards.
func TestStreamRateLimit(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	srv := startProc(t, append(serverArgs(pk, "127.0.0.1:0", "echo="+echoBackend(t)), "--max-stream-rate", "20",
		"--max-streams", "50", "--admin", "127.0.0.1:0", "--log-level", "info")...)
	cli := startProc(t, clientArgs(pk, srv.addr(t), "echo")...)
	cli.waitEvent(t, waitTimeout, "session", isEvent("session_opened"))
	fwd := cli.forwardAddr(t, "echo")
	var refused atomic.Int64
	var wg sync.WaitGroup
	for range 200 {
		wg.Go(func() {
			if ok, _, _ := echoTry(fwd, 1, 16); !ok {
				refused.Add(1)
			}
		})
	}
	wg.Wait()
	t.Logf("%d of 200 simultaneous stream opens refused at 20/s after a burst of 50", refused.Load())
	if refused.Load() == 0 {
		t.Error("no stream was refused past the rate")
	}
	waitMetrics(t, "http://"+srv.adminAddr(t), `tunnel_limit_hits_total{limit="stream_rate"}`)
	if n := len(srv.matching(isEvent("stream_refused", "status", "over_limit"))); n > 5 {
		t.Errorf("%d over_limit lines for one burst, want them throttled", n)
	}
	time.Sleep(1100 * time.Millisecond) // the bucket refills
	echoCheck(t, fwd, 91, 1<<16)
}

// TestMaxSessionLifetime: a session past --max-session-lifetime ends
// gracefully: a stream open across the boundary completes intact, and the
// client moves to a new session.
func TestMaxSessionLifetime(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	srv := startProc(t, append(serverArgs(pk, "127.0.0.1:0", "echo="+echoBackend(t)), "--max-session-lifetime", "1s")...)
	cli := startProc(t, clientArgs(pk, srv.addr(t), "echo")...)
	cli.waitEvent(t, waitTimeout, "session", isEvent("session_opened"))
	fwd := cli.forwardAddr(t, "echo")

	// A slow stream that spans the 1 s boundary.
	c := dialLocal(t, fwd)
	c.SetDeadline(time.Now().Add(waitTimeout))
	var sent [32]byte
	var wg sync.WaitGroup
	wg.Go(func() {
		r := randReader(92, 2<<20)
		buf := make([]byte, 64<<10)
		h := newHasher()
		for range 32 {
			n, _ := io.ReadFull(r, buf)
			h.Write(buf[:n])
			c.Write(buf[:n])
			time.Sleep(60 * time.Millisecond)
		}
		sent = h.sum()
		c.CloseWrite()
	})
	got, n, err := recvHashed(c)
	wg.Wait()
	if err != nil || n != 2<<20 || got != sent {
		t.Fatalf("stream across the lifetime boundary: %d bytes, err %v, intact %v", n, err, got == sent)
	}
	srv.waitEvent(t, waitTimeout, "session_expiring", isEvent("session_expiring"))
	cli.waitEventN(t, waitTimeout, 2, "a second session", isEvent("session_opened"))
	echoCheck(t, fwd, 93, 1<<16)
}

// hasher is a SHA-256 that its writer can feed piece by piece.
type hasher struct{ h hash.Hash }

func newHasher() *hasher            { return &hasher{sha256.New()} }
func (h *hasher) Write(b []byte)    { h.h.Write(b) }
func (h *hasher) sum() (s [32]byte) { return [32]byte(h.h.Sum(nil)) }
