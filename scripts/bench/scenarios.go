package main

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// config holds the sizes of one run; fullConfig is `make bench`,
// smokeConfig is CI's `make bench-smoke`.
type config struct {
	Rounds          int           `json:"rounds"`
	ThroughputBytes int64         `json:"throughput_bytes"`
	ParallelConns   int           `json:"parallel_conns"`
	ParallelBytes   int64         `json:"parallel_bytes_each"`
	PingpongCount   int           `json:"pingpong_count"`
	ConnrateCount   int           `json:"connrate_count"`
	StreamsCount    int           `json:"streams_count"`
	WANBytes        int64         `json:"wan_bytes"`
	WANRTT          time.Duration `json:"wan_rtt_ns"`
	WANRate         int64         `json:"wan_rate_bytes_per_s"`
	HandshakesCount int           `json:"handshakes_count"`
	TLSRateCount    int           `json:"tlsrate_count"`
}

var fullConfig = config{
	Rounds: 5, ThroughputBytes: 1 << 30, ParallelConns: 16, ParallelBytes: 128 << 20,
	PingpongCount: 20000, ConnrateCount: 2000, StreamsCount: 10000,
	WANBytes: 256 << 20, WANRTT: 50 * time.Millisecond, WANRate: 125_000_000,
	HandshakesCount: 500, TLSRateCount: 2000,
}

var smokeConfig = config{
	Rounds: 1, ThroughputBytes: 64 << 20, ParallelConns: 16, ParallelBytes: 4 << 20,
	PingpongCount: 2000, ConnrateCount: 200, StreamsCount: 1000,
	WANBytes: 16 << 20, WANRTT: 50 * time.Millisecond, WANRate: 125_000_000,
	HandshakesCount: 500, TLSRateCount: 200,
}

// Target names.
const (
	direct  = "direct"  // load generator straight to the backend
	tunnel  = "tunnel"  // through a tunnel client and server
	stunnel = "stunnel" // through a stunnel client and server
	plain   = "plain"   // plain TCP through the WAN proxy
)

// sample is one measurement as the load tool printed it.
type sample map[string]float64

// series is every sample of one target in one scenario (and variant).
type series struct {
	Scenario string           `json:"scenario"`
	Variant  string           `json:"variant,omitempty"`
	Target   string           `json:"target"`
	Samples  []sample         `json:"samples"`
	Usage    map[string]usage `json:"usage,omitempty"` // by process, at the end of the scenario
}

// target is where one target's load goes.
type target struct {
	name string
	addr string
}

// runRounds runs cmd with args plus --addr for each target, interleaved
// (A B C A B C ...), for cfg.Rounds rounds.
func (w *world) runRounds(ctx context.Context, rounds int, scenario, variant string, targets []target, cmd string, args ...string) ([]*series, error) {
	out := make([]*series, len(targets))
	for i, t := range targets {
		out[i] = &series{Scenario: scenario, Variant: variant, Target: t.name}
	}
	for r := range rounds {
		for i, t := range targets {
			s, err := w.load1(ctx, cmd, append([]string{"--addr", t.addr}, args...)...)
			if err != nil {
				return nil, fmt.Errorf("%s %s, %s, round %d: %w", scenario, variant, t.name, r+1, err)
			}
			out[i].Samples = append(out[i].Samples, s)
			logf("  %-10s %-5s %-8s round %d: %s", scenario, variant, t.name, r+1, brief(s))
		}
	}
	return out, nil
}

// load1 runs one measurement of the load tool, bounded in time.
func (w *world) load1(ctx context.Context, cmd string, args ...string) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	return runJSON(ctx, w.load, append([]string{cmd}, args...)...)
}

// brief is the headline figure of a sample, for the progress log.
func brief(s sample) string {
	for _, k := range []string{"mb_per_s", "p50_us", "all_up_seconds", "procs.0.hwm_kib"} {
		if v, ok := s[k]; ok {
			if k == "p50_us" {
				return fmt.Sprintf("p50 %.0f us, p99 %.0f us, %.0f/s", v, s["p99_us"], s["per_s"])
			}
			return fmt.Sprintf("%s %.1f", k, v)
		}
	}
	return fmt.Sprint(map[string]float64(s))
}

// tlsSetup is a tunnel pair and, if stunnel is installed, a stunnel pair,
// both fresh for one scenario.
type tlsSetup struct {
	pair *pair
	st   *stunnels // nil without stunnel
}

func (w *world) startBoth(tag string, serverFlags ...string) (*tlsSetup, error) {
	p, err := w.startPair(tag, serverFlags...)
	if err != nil {
		return nil, err
	}
	s := &tlsSetup{pair: p}
	if w.stunnel != "" {
		if s.st, err = w.startStunnel(tag); err != nil {
			p.stop()
			return nil, err
		}
	}
	return s, nil
}

// targets returns direct, tunnel and stunnel addresses for the route.
func (s *tlsSetup) targets(w *world, route string) []target {
	pick := func(sink, echo string) string {
		if route == "sink" {
			return sink
		}
		return echo
	}
	ts := []target{{direct, pick(w.sink, w.echo)}, {tunnel, pick(s.pair.sink, s.pair.echo)}}
	if s.st != nil {
		ts = append(ts, target{stunnel, pick(s.st.sink, s.st.echo)})
	}
	return ts
}

// finish records the processes' peak RSS and CPU time in the first series
// of their target, then stops them.
func (s *tlsSetup) finish(out []*series) {
	procs := map[string]map[string]*proc{tunnel: {"server": s.pair.server, "client": s.pair.client}}
	if s.st != nil {
		procs[stunnel] = map[string]*proc{"server": s.st.server, "client": s.st.client}
	}
	seen := map[string]bool{} // variants of a scenario share the processes: record them once
	for _, se := range out {
		if seen[se.Target] {
			continue
		}
		seen[se.Target] = true
		for role, p := range procs[se.Target] {
			if u, err := procUsage(p.pid()); err == nil {
				if se.Usage == nil {
					se.Usage = map[string]usage{}
				}
				se.Usage[role] = u
			}
		}
	}
	s.pair.stop()
	if s.st != nil {
		s.st.stop()
	}
}

// scenario is one named scenario of the suite.
type scenario struct {
	name string
	run  func(ctx context.Context, w *world, cfg config) ([]*series, error)
}

var scenarios = []scenario{
	{"throughput", func(ctx context.Context, w *world, cfg config) ([]*series, error) {
		return w.withBoth(ctx, "throughput", func(s *tlsSetup) ([]*series, error) {
			return w.runRounds(ctx, cfg.Rounds, "throughput", "", s.targets(w, "sink"), "throughput",
				"--bytes", fmt.Sprint(cfg.ThroughputBytes))
		})
	}},
	{"parallel", func(ctx context.Context, w *world, cfg config) ([]*series, error) {
		return w.withBoth(ctx, "parallel", func(s *tlsSetup) ([]*series, error) {
			return w.runRounds(ctx, cfg.Rounds, "parallel", "", s.targets(w, "sink"), "throughput",
				"--bytes", fmt.Sprint(cfg.ParallelBytes), "--conns", fmt.Sprint(cfg.ParallelConns))
		})
	}},
	{"pingpong", func(ctx context.Context, w *world, cfg config) ([]*series, error) {
		return w.withBoth(ctx, "pingpong", func(s *tlsSetup) ([]*series, error) {
			return w.runRounds(ctx, cfg.Rounds, "pingpong", "", s.targets(w, "echo"), "pingpong",
				"--count", fmt.Sprint(cfg.PingpongCount))
		})
	}},
	{"connrate", func(ctx context.Context, w *world, cfg config) ([]*series, error) {
		return w.withBoth(ctx, "connrate", func(s *tlsSetup) ([]*series, error) {
			var all []*series
			for _, c := range []int{1, 8} {
				out, err := w.runRounds(ctx, cfg.Rounds, "connrate", "c="+strconv.Itoa(c), s.targets(w, "echo"), "connrate",
					"--count", fmt.Sprint(cfg.ConnrateCount), "--concurrency", strconv.Itoa(c))
				if err != nil {
					return nil, err
				}
				all = append(all, out...)
			}
			return all, nil
		})
	}},
	{"raw", func(ctx context.Context, w *world, cfg config) ([]*series, error) {
		// Raw mode: one mutual-TLS connection per local connection, no
		// yamux, no header (a --raw client to a --raw-route): the same job
		// as stunnel's.
		srv, addr, err := w.startServer("raw", "--raw-route", "sink")
		if err != nil {
			return nil, err
		}
		p, err := w.startClient("raw", addr, "--raw")
		if err != nil {
			srv.stop()
			return nil, err
		}
		p.server, p.serverAddr = srv, addr
		s := &tlsSetup{pair: p}
		if w.stunnel != "" {
			if s.st, err = w.startStunnel("raw"); err != nil {
				p.stop()
				return nil, err
			}
		}
		out, err := w.runRounds(ctx, cfg.Rounds, "raw", "", s.targets(w, "sink"), "throughput",
			"--bytes", fmt.Sprint(cfg.ThroughputBytes))
		if err != nil {
			p.stop()
			if s.st != nil {
				s.st.stop()
			}
			return nil, err
		}
		s.finish(out)
		return out, nil
	}},
	{"tlsrate", func(ctx context.Context, w *world, cfg config) ([]*series, error) {
		return w.withBoth(ctx, "tlsrate", func(s *tlsSetup) ([]*series, error) {
			args := []string{"--count", fmt.Sprint(cfg.TLSRateCount), "--concurrency", "8",
				"--cert", w.file("bench.pem"), "--key", w.file("bench-key.pem"), "--ca", w.file("ca.pem"),
				"--server-name", serverName}
			tun, err := w.runRounds(ctx, cfg.Rounds, "tlsrate", "c=8", []target{{tunnel, s.pair.serverAddr}}, "tlsrate",
				append(args, "--alpn", "tunnel/1")...)
			if err != nil || s.st == nil {
				return tun, err
			}
			st, err := w.runRounds(ctx, cfg.Rounds, "tlsrate", "c=8", []target{{stunnel, s.st.serverEcho}}, "tlsrate", args...)
			return append(tun, st...), err
		})
	}},
	{"streams", runStreams},
	{"wan", runWAN},
	{"handshakes", runHandshakes},
}

// withBoth runs f with a fresh tunnel pair (its server with serverFlags
// added) and stunnel pair, then records their usage and stops them.
func (w *world) withBoth(_ context.Context, tag string, f func(*tlsSetup) ([]*series, error), serverFlags ...string) ([]*series, error) {
	s, err := w.startBoth(tag, serverFlags...)
	if err != nil {
		return nil, err
	}
	out, err := f(s)
	if err != nil {
		s.pair.stop()
		if s.st != nil {
			s.st.stop()
		}
		return nil, fmt.Errorf("%w\nlast lines of the tunnel server:\n%s\nlast lines of the tunnel client:\n%s", err, s.pair.server.tail(), s.pair.client.tail())
	}
	s.finish(out)
	return out, nil
}

// runStreams holds cfg.StreamsCount idle streams through one session, with a
// fresh pair each round (VmHWM is a peak since the process started).
func runStreams(ctx context.Context, w *world, cfg config) ([]*series, error) {
	se := &series{Scenario: "streams", Target: tunnel}
	for r := range cfg.Rounds {
		// The server's per-session stream cap must admit them all.
		p, err := w.startPair("streams", "--max-streams", fmt.Sprint(cfg.StreamsCount+100))
		if err != nil {
			return nil, err
		}
		s, err := w.load1(ctx, "streams", "--addr", p.echo, "--count", fmt.Sprint(cfg.StreamsCount),
			"--pids", fmt.Sprintf("%d,%d", p.server.pid(), p.client.pid()))
		p.stop()
		if err != nil {
			return nil, fmt.Errorf("streams, round %d: %w", r+1, err)
		}
		se.Samples = append(se.Samples, s)
		logf("  %-10s %-5s %-8s round %d: server VmHWM %.0f KiB, client VmHWM %.0f KiB", "streams", "", tunnel, r+1, s["procs.0.hwm_kib"], s["procs.1.hwm_kib"])
	}
	return []*series{se}, nil
}

// runWAN moves cfg.WANBytes over one connection through a WAN-like proxy:
// plain TCP through it to the sink, and through the tunnel whose session
// crosses an identical proxy (client -> proxy -> server).
func runWAN(ctx context.Context, w *world, cfg config) ([]*series, error) {
	plainProxy, plainAddr, err := w.startDelay(w.sink, cfg.WANRTT, cfg.WANRate)
	if err != nil {
		return nil, err
	}
	defer plainProxy.stop()
	srv, srvAddr, err := w.startServer("wan")
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	tunProxy, tunProxyAddr, err := w.startDelay(srvAddr, cfg.WANRTT, cfg.WANRate)
	if err != nil {
		return nil, err
	}
	defer tunProxy.stop()
	cli, err := w.startClient("wan", tunProxyAddr)
	if err != nil {
		return nil, err
	}
	defer cli.stop()
	targets := []target{{plain, plainAddr}, {tunnel, cli.sink}}
	variant := fmt.Sprintf("%v RTT, %d Mbit/s", cfg.WANRTT, cfg.WANRate*8/1_000_000)
	return w.runRounds(ctx, cfg.Rounds, "wan", variant, targets, "throughput", "--bytes", fmt.Sprint(cfg.WANBytes))
}

// runHandshakes starts cfg.HandshakesCount sessions at once against a fresh
// server each round.
func runHandshakes(ctx context.Context, w *world, cfg config) ([]*series, error) {
	se := &series{Scenario: "handshakes", Target: tunnel}
	for r := range cfg.Rounds {
		srv, addr, err := w.startServer("handshakes")
		if err != nil {
			return nil, err
		}
		// As many distinct clients: each session its own certificate and
		// source address, so the server's per-identity and per-address
		// limits see what they would in production.
		s, err := w.load1(ctx, "handshakes", "--addr", addr, "--count", fmt.Sprint(cfg.HandshakesCount),
			"--ca", w.file("ca.pem"), "--ca-key", w.file("ca-key.pem"), "--sources", "127.1.0.0/16",
			"--server-name", serverName)
		srv.stop()
		if err != nil {
			return nil, fmt.Errorf("handshakes, round %d: %w", r+1, err)
		}
		se.Samples = append(se.Samples, s)
		logf("  %-10s %-5s %-8s round %d: all up in %.2f s (%.0f retries)", "handshakes", "", tunnel, r+1, s["all_up_seconds"], s["retries"])
	}
	return []*series{se}, nil
}
