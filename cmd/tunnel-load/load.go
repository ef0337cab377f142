package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// opTimeout bounds every connection of a run, so a stuck tunnel fails the
// run instead of hanging the suite. Tests shorten it.
var opTimeout = 5 * time.Minute

// payload is what the generator sends: random, so nothing on the path can
// shrink it, and shared read-only by all connections.
var payload = func() []byte {
	b := make([]byte, 1<<20)
	r := rand.NewChaCha8([32]byte{'t', 'u', 'n', 'n', 'e', 'l'})
	r.Read(b)
	return b
}()

// ThroughputResult is what the throughput command prints.
type ThroughputResult struct {
	Conns   int     `json:"conns"`
	Bytes   int64   `json:"bytes"` // in total, all connections
	Seconds float64 `json:"seconds"`
	MBps    float64 `json:"mb_per_s"` // 10^6 bytes per second
}

// cmdThroughput sends --bytes on each of --conns connections to a sink at
// once and times it from the first dial to the last byte count received.
func cmdThroughput(ctx context.Context, fs *flag.FlagSet, args []string, stdout io.Writer) error {
	addr := fs.String("addr", "", "sink address (direct, or a tunnel or stunnel front)")
	n := fs.Int64("bytes", 1<<30, "bytes to send on each connection")
	conns := fs.Int("conns", 1, "connections at once")
	if err := parse(fs, args, "addr"); err != nil {
		return err
	}
	if err := positive(map[string]int64{"bytes": *n, "conns": int64(*conns)}); err != nil {
		return err
	}
	start := time.Now()
	errs := make(chan error, *conns)
	for range *conns {
		go func() { errs <- sendToSink(ctx, *addr, *n) }()
	}
	var first error
	for range *conns {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return first
	}
	secs := time.Since(start).Seconds()
	total := *n * int64(*conns)
	return emit(stdout, ThroughputResult{Conns: *conns, Bytes: total, Seconds: secs, MBps: float64(total) / 1e6 / secs})
}

// sendToSink sends n bytes, half-closes, and checks the sink's count.
func sendToSink(ctx context.Context, addr string, n int64) error {
	c, err := dial(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	for sent := int64(0); sent < n; {
		off := int(sent % int64(len(payload)))
		chunk := payload[off:min(len(payload), off+128<<10)]
		chunk = chunk[:min(int64(len(chunk)), n-sent)]
		m, err := c.Write(chunk)
		sent += int64(m)
		if err != nil {
			return fmt.Errorf("sending to %s after %d bytes: %w", addr, sent, err)
		}
	}
	if err := c.CloseWrite(); err != nil {
		return err
	}
	var got [8]byte
	if _, err := io.ReadFull(c, got[:]); err != nil {
		return fmt.Errorf("reading the sink's count from %s: %w", addr, err)
	}
	if m := int64(binary.BigEndian.Uint64(got[:])); m != n {
		return fmt.Errorf("sink at %s counted %d bytes, sent %d", addr, m, n)
	}
	return nil
}

// dial connects to addr with opTimeout on the whole connection.
func dial(ctx context.Context, addr string) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(opTimeout))
	return c.(*net.TCPConn), nil
}

// LatencyResult is what the pingpong and connrate commands print; times in
// microseconds.
type LatencyResult struct {
	Count       int     `json:"count"`
	Concurrency int     `json:"concurrency,omitempty"`
	Seconds     float64 `json:"seconds"`
	PerSec      float64 `json:"per_s"` // round trips or connections per second
	P50us       float64 `json:"p50_us"`
	P99us       float64 `json:"p99_us"`
	MaxUs       float64 `json:"max_us"`
	// Refused counts the connections that failed (closed, reset or
	// wrong bytes; connrate and tlsrate): the latency figures are those of
	// the others.
	Refused int `json:"refused"`
}

func latencyResult(lat []time.Duration, conc int, elapsed time.Duration) LatencyResult {
	r := LatencyResult{Count: len(lat), Concurrency: conc, Seconds: elapsed.Seconds(), PerSec: float64(len(lat)) / elapsed.Seconds()}
	if len(lat) == 0 {
		return r
	}
	slices.Sort(lat)
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	r.P50us, r.P99us, r.MaxUs = us(percentile(lat, 0.50)), us(percentile(lat, 0.99)), us(lat[len(lat)-1])
	return r
}

// percentile returns the p-quantile of sorted (nearest rank).
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(float64(len(sorted))*p+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// cmdPingpong makes --count one-byte round trips on one connection to an
// echo server, after a short warm-up that is not counted.
func cmdPingpong(ctx context.Context, fs *flag.FlagSet, args []string, stdout io.Writer) error {
	addr := fs.String("addr", "", "echo address")
	count := fs.Int("count", 20000, "round trips")
	if err := parse(fs, args, "addr"); err != nil {
		return err
	}
	if err := positive(map[string]int64{"count": int64(*count)}); err != nil {
		return err
	}
	c, err := dial(ctx, *addr)
	if err != nil {
		return err
	}
	defer c.Close()
	b := []byte{0}
	lat := make([]time.Duration, 0, *count)
	const warmup = 200
	start := time.Now()
	for i := range warmup + *count {
		if i == warmup {
			start = time.Now()
		}
		t0 := time.Now()
		b[0] = byte(i)
		if _, err := c.Write(b); err != nil {
			return fmt.Errorf("round trip %d: %w", i, err)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return fmt.Errorf("round trip %d: %w", i, err)
		}
		if b[0] != byte(i) {
			return fmt.Errorf("round trip %d: echo returned %d", i, b[0])
		}
		if i >= warmup {
			lat = append(lat, time.Since(t0))
		}
	}
	return emit(stdout, latencyResult(lat, 0, time.Since(start)))
}

// cmdConnrate opens --count connections, --concurrency at a time; each sends
// --size bytes to an echo server, reads them back and closes. Latency is from
// the dial to the last byte of the echo.
func cmdConnrate(ctx context.Context, fs *flag.FlagSet, args []string, stdout io.Writer) error {
	addr := fs.String("addr", "", "echo address")
	count := fs.Int("count", 2000, "connections in all")
	conc := fs.Int("concurrency", 1, "connections at once")
	size := fs.Int("size", 64, "bytes echoed on each connection")
	if err := parse(fs, args, "addr"); err != nil {
		return err
	}
	if err := positive(map[string]int64{"count": int64(*count), "concurrency": int64(*conc), "size": int64(*size)}); err != nil {
		return err
	}
	msg := payload[:*size]
	return emit(stdout, rate(*count, *conc, func() error {
		got := make([]byte, len(msg))
		return echoOnce(ctx, *addr, msg, got)
	}))
}

// rate runs count operations, conc at a time, and returns their rate and
// latencies; an operation that fails is counted as refused and the run goes
// on, so a limit that refuses some shows as that number, not as a failed run.
func rate(count, conc int, op func() error) LatencyResult {
	lat := make([]time.Duration, 0, count)
	var mu sync.Mutex
	var next, refused atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for next.Add(1) <= int64(count) {
				t0 := time.Now()
				if err := op(); err != nil {
					refused.Add(1)
					continue
				}
				d := time.Since(t0)
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	r := latencyResult(lat, conc, time.Since(start))
	r.Count, r.Refused = count, int(refused.Load())
	return r
}

// echoOnce dials addr, sends msg, reads it back into got and closes.
func echoOnce(ctx context.Context, addr string, msg, got []byte) error {
	c, err := dial(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write(msg); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo from %s differs from what was sent", addr)
	}
	return nil
}
