package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	opTimeout = 30 * time.Second // a stuck exchange fails its test, not the whole run
	goleak.VerifyTestMain(m)
}

// backends starts the sink and echo servers of cmdServe and returns their
// addresses; they stop at cleanup.
func backends(t *testing.T) (sink, echo string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- cmdServe(ctx, newFlagSet(), nil, pw)
		pw.Close()
	}()
	var addrs map[string]string
	if err := json.NewDecoder(pr).Decode(&addrs); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, pr)
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return addrs["sink"], addrs["echo"]
}

// runCmd runs the load tool with args and returns its JSON output.
func runCmd(t *testing.T, args ...string) map[string]any {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := run(t.Context(), args, &out, &errOut); code != 0 {
		t.Fatalf("tunnel-load %s: exit %d: %s", strings.Join(args, " "), code, errOut.String())
	}
	var m map[string]any
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatalf("output %q: %v", out.String(), err)
	}
	return m
}

func TestMeasurementsAgainstBackends(t *testing.T) {
	sink, echo := backends(t)
	m := runCmd(t, "throughput", "--addr", sink, "--bytes", "3000000", "--conns", "3")
	if m["bytes"].(float64) != 9e6 || m["mb_per_s"].(float64) <= 0 {
		t.Errorf("throughput = %v", m)
	}
	m = runCmd(t, "pingpong", "--addr", echo, "--count", "50")
	if m["count"].(float64) != 50 || m["p50_us"].(float64) <= 0 || m["p99_us"].(float64) < m["p50_us"].(float64) {
		t.Errorf("pingpong = %v", m)
	}
	m = runCmd(t, "connrate", "--addr", echo, "--count", "40", "--concurrency", "4")
	if m["count"].(float64) != 40 || m["per_s"].(float64) <= 0 {
		t.Errorf("connrate = %v", m)
	}
	m = runCmd(t, "streams", "--addr", echo, "--count", "30")
	if m["count"].(float64) != 30 {
		t.Errorf("streams = %v", m)
	}
}

// The sink's count is what makes a throughput figure trustworthy: a short
// count fails the run.
func TestSendToSinkChecksTheCount(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait() // after the listener is closed (defers run last first)
	defer ln.Close()
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(io.Discard, c)
		c.Write([]byte{0, 0, 0, 0, 0, 0, 0, 1}) // claims one byte
	})
	if err := sendToSink(t.Context(), ln.Addr().String(), 1000); err == nil || !strings.Contains(err.Error(), "counted 1 bytes, sent 1000") {
		t.Errorf("sendToSink against a lying sink = %v, want a count mismatch", err)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"nosuch"},
		{"throughput"},
		{"throughput", "--addr", "x", "--bytes", "0"},
		{"delay", "--to", "x", "--rtt", "-1s"},
		{"streams", "--addr", "x", "--pids", "a,b"},
	} {
		var out, errOut bytes.Buffer
		if code := run(t.Context(), args, &out, &errOut); code != 2 {
			t.Errorf("tunnel-load %q: exit %d, want 2 (%s)", args, code, errOut.String())
		}
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	for _, tt := range []struct {
		p    float64
		want time.Duration
	}{{0.5, 50}, {0.99, 99}, {1, 100}, {0, 1}} {
		if got := percentile(d, tt.p); got != tt.want {
			t.Errorf("percentile(1..100, %v) = %v, want %v", tt.p, got, tt.want)
		}
	}
}
