package main

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
)

// report is everything one run measured; it is written as JSON as it is.
type report struct {
	Generated string    `json:"generated"` // RFC 3339, UTC
	Mode      string    `json:"mode"`      // "full" or "smoke"
	Machine   machine   `json:"machine"`
	Config    config    `json:"config"`
	Series    []*series `json:"series"`
	Micro     []micro   `json:"micro"`
	Verdicts  []verdict `json:"targets"`
}

type machine struct {
	CPU     string `json:"cpu"`
	Cores   int    `json:"cores"`
	Kernel  string `json:"kernel"`
	Go      string `json:"go"`
	Stunnel string `json:"stunnel"` // version line, or "" if not installed
	Commit  string `json:"commit"`
	Load    string `json:"loadavg_at_start"`
}

// stat is the median, minimum and maximum of one metric over the rounds.
type stat struct{ med, lo, hi float64 }

func (s stat) ok() bool { return !math.IsNaN(s.med) }

var none = stat{math.NaN(), math.NaN(), math.NaN()}

func statOf(vals []float64) stat {
	if len(vals) == 0 {
		return none
	}
	v := slices.Clone(vals)
	slices.Sort(v)
	med := v[len(v)/2]
	if len(v)%2 == 0 {
		med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return stat{med, v[0], v[len(v)-1]}
}

// find returns the series of scenario, variant and target, or nil.
func (r *report) find(scenario, variant, target string) *series {
	for _, s := range r.Series {
		if s.Scenario == scenario && s.Variant == variant && s.Target == target {
			return s
		}
	}
	return nil
}

// metric summarises one metric of one series; f derives it from a sample.
func (r *report) metric(scenario, variant, target string, f func(sample) float64) stat {
	s := r.find(scenario, variant, target)
	if s == nil {
		return none
	}
	var vals []float64
	for _, x := range s.Samples {
		if v := f(x); !math.IsNaN(v) {
			vals = append(vals, v)
		}
	}
	return statOf(vals)
}

func key(k string) func(sample) float64 {
	return func(s sample) float64 {
		if v, ok := s[k]; ok {
			return v
		}
		return math.NaN()
	}
}

// perStreamKiB is the growth of a process's peak RSS while the streams were
// opened, per stream: (VmHWM - VmRSS before) / streams.
func perStreamKiB(proc int) func(sample) float64 {
	return func(s sample) float64 {
		p := fmt.Sprintf("procs.%d.", proc)
		return (s[p+"hwm_kib"] - s[p+"rss_before_kib"]) / s["count"]
	}
}

// verdict is one target of the issue, checked against this run.
type verdict struct {
	Name     string   `json:"name"`
	Goal     string   `json:"goal"`
	Measured string   `json:"measured"`
	Value    float64  `json:"-"`
	JSONVal  *float64 `json:"value"` // Value; null when not measured (JSON has no NaN)
	Met      *bool    `json:"met"`   // nil: not measured in this run
}

func check(name, goal, format string, v float64, ok func(float64) bool) verdict {
	if math.IsNaN(v) {
		return verdict{Name: name, Goal: goal, Measured: "not measured", Value: v}
	}
	met := ok(v)
	return verdict{Name: name, Goal: goal, Measured: fmt.Sprintf(format, v), Value: v, JSONVal: &v, Met: &met}
}

// ratio is a/b of the medians.
func ratio(a, b stat) float64 {
	if !a.ok() || !b.ok() || b.med == 0 {
		return math.NaN()
	}
	return a.med / b.med
}

func (r *report) verdicts() []verdict {
	ts := func(scenario, variant, k string) float64 {
		return ratio(r.metric(scenario, variant, tunnel, key(k)), r.metric(scenario, variant, stunnel, key(k)))
	}
	atLeast := func(x float64) func(float64) bool { return func(v float64) bool { return v >= x } }
	atMost := func(x float64) func(float64) bool { return func(v float64) bool { return v <= x } }
	wanVariant := ""
	for _, s := range r.Series {
		if s.Scenario == "wan" {
			wanVariant = s.Variant
		}
	}
	allow := math.NaN()
	for _, m := range r.Micro {
		if m.Name == "BenchmarkAllowlistContainsScaling/cidrs=10000" {
			allow = m.NsPerOp
		}
	}
	// perGB is a process's CPU seconds per GB the scenario moved.
	perGB := func(scenario, target, role string) float64 {
		se := r.find(scenario, "", target)
		if se == nil || se.Usage == nil {
			return math.NaN()
		}
		var moved float64
		for _, x := range se.Samples {
			moved += x["bytes"]
		}
		if moved == 0 {
			return math.NaN()
		}
		return se.Usage[role].CPUSeconds / (moved / 1e9)
	}
	// cpu is the larger of an end's CPU-per-GB ratios to stunnel's, over
	// the 1-stream and the 16-stream scenarios.
	cpu := func(role string) float64 {
		a := perGB("throughput", tunnel, role) / perGB("throughput", stunnel, role)
		b := perGB("parallel", tunnel, role) / perGB("parallel", stunnel, role)
		if math.IsNaN(a) || math.IsNaN(b) {
			return math.NaN()
		}
		return max(a, b)
	}
	hwm := math.NaN()
	if se := r.find("parallel", "", tunnel); se != nil && se.Usage != nil {
		hwm = float64(max(se.Usage["server"].HWMKiB, se.Usage["client"].HWMKiB)) / 1024
	}
	// connrate is the rate ratio, with the refusals in the verdict.
	connrate := func(variant string) verdict {
		v := ts("connrate", variant, "per_s")
		refused := 0.0
		if se := r.find("connrate", variant, tunnel); se != nil {
			for _, x := range se.Samples {
				refused += x["refused"]
			}
		}
		out := check("connrate "+variant, ">= 4x stunnel, none refused", "%.2fx", v, atLeast(4))
		if out.Met != nil {
			out.Measured += fmt.Sprintf(", %.0f refused", refused)
			met := *out.Met && refused == 0
			out.Met = &met
		}
		return out
	}
	return []verdict{
		check("throughput, 1 stream", ">= 1.1x stunnel", "%.2fx", ts("throughput", "", "mb_per_s"), atLeast(1.1)),
		check("parallel, 16 streams", ">= 1.1x stunnel", "%.2fx", ts("parallel", "", "mb_per_s"), atLeast(1.1)),
		check("CPU-s per GB, server end (worse of 1 and 16 streams)", "<= 1.0x stunnel", "%.2fx", cpu("server"), atMost(1.0)),
		check("CPU-s per GB, client end (worse of 1 and 16 streams)", "<= 1.0x stunnel", "%.2fx", cpu("client"), atMost(1.0)),
		check("peak RSS of each end after the 16-stream run", "<= 32 MiB", "%.1f MiB", hwm, atMost(32)),
		check("pingpong p50", "<= 0.7x stunnel", "%.2fx", ts("pingpong", "", "p50_us"), atMost(0.7)),
		check("pingpong p99", "<= 0.9x stunnel", "%.2fx", ts("pingpong", "", "p99_us"), atMost(0.9)),
		connrate("c=1"),
		connrate("c=8"),
		check("full mutual-TLS handshakes per second, c=8", ">= 1.0x stunnel", "%.2fx", ts("tlsrate", "c=8", "per_s"), atLeast(1.0)),
		check("raw mode throughput, 1 connection", ">= 1.2x stunnel", "%.2fx", ts("raw", "", "mb_per_s"), atLeast(1.2)),
		check("streams: server RSS per idle stream", "<= 20 KiB", "%.1f KiB",
			r.metric("streams", "", tunnel, perStreamKiB(0)).med, atMost(20)),
		check("wan: tunnel vs plain TCP via the proxy", ">= 0.9x", "%.2fx",
			ratio(r.metric("wan", wanVariant, tunnel, key("mb_per_s")), r.metric("wan", wanVariant, plain, key("mb_per_s"))), atLeast(0.9)),
		check("handshakes: sessions all up (slowest round)", "<= 5 s", "%.2f s",
			r.metric("handshakes", "", tunnel, key("all_up_seconds")).hi, atMost(5)),
		check("allowlist lookup, 10 000 CIDRs", "< 200 ns", "%.0f ns", allow, func(v float64) bool { return v < 200 }),
	}
}

// num formats v with about three significant digits.
func num(v float64) string {
	switch a := math.Abs(v); {
	case math.IsNaN(v):
		return "–"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func cell(s stat) string {
	if !s.ok() {
		return "–"
	}
	if s.lo == s.hi {
		return num(s.med)
	}
	return fmt.Sprintf("%s (%s–%s)", num(s.med), num(s.lo), num(s.hi))
}

func ratioCell(v float64) string {
	if math.IsNaN(v) {
		return "–"
	}
	return fmt.Sprintf("%.2fx", v)
}

// markdown renders the generated section of BENCHMARKS.md.
func (r *report) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("## Results: %s run of %s\n\n", r.Mode, r.Generated)
	p("Machine: %s, %d cores, Linux %s; %s; %s; commit %s. Load average at start: %s.\n",
		r.Machine.CPU, r.Machine.Cores, r.Machine.Kernel, r.Machine.Go, orNone(r.Machine.Stunnel, "stunnel not installed"), r.Machine.Commit, r.Machine.Load)
	rounds := fmt.Sprintf("the median of %d rounds (min–max in parentheses)", r.Config.Rounds)
	if r.Config.Rounds == 1 {
		rounds = "from a single round"
	}
	p("Every figure is %s; the targets ran interleaved (direct, tunnel, stunnel, direct, ...), so ratios compare like with like. Ratios are of medians.\n\n", rounds)

	p("### Targets\n\n| target | goal | measured | met |\n|---|---|---|---|\n")
	for _, v := range r.Verdicts {
		met := "not measured"
		if v.Met != nil {
			met = map[bool]string{true: "yes", false: "**no**"}[*v.Met]
		}
		p("| %s | %s | %s | %s |\n", v.Name, v.Goal, v.Measured, met)
	}

	p("\n### Scenarios\n\n| scenario | metric | direct | tunnel | stunnel | tunnel/stunnel | tunnel/direct |\n|---|---|---|---|---|---|---|\n")
	type row struct{ scenario, variant, label, metric, unit string }
	c := r.Config
	rows := []row{
		{"throughput", "", fmt.Sprintf("throughput, 1 connection, %s", size(c.ThroughputBytes)), "mb_per_s", "MB/s"},
		{"parallel", "", fmt.Sprintf("parallel, %d x %s", c.ParallelConns, size(c.ParallelBytes)), "mb_per_s", "MB/s"},
		{"pingpong", "", fmt.Sprintf("pingpong, %d round trips", c.PingpongCount), "p50_us", "p50 µs"},
		{"pingpong", "", "", "p99_us", "p99 µs"},
		{"connrate", "c=1", fmt.Sprintf("connrate, %d connections, c=1", c.ConnrateCount), "per_s", "conn/s"},
		{"connrate", "c=1", "", "p50_us", "p50 µs"},
		{"connrate", "c=1", "", "p99_us", "p99 µs"},
		{"connrate", "c=8", fmt.Sprintf("connrate, %d connections, c=8", c.ConnrateCount), "per_s", "conn/s"},
		{"connrate", "c=8", "", "p50_us", "p50 µs"},
		{"connrate", "c=8", "", "p99_us", "p99 µs"},
		{"connrate", "c=1", "connrate c=1, refused", "refused", "connections"},
		{"connrate", "c=8", "connrate c=8, refused", "refused", "connections"},
		{"tlsrate", "c=8", fmt.Sprintf("full mutual-TLS handshakes, %d, c=8, no resumption", c.TLSRateCount), "per_s", "handshakes/s"},
		{"raw", "", fmt.Sprintf("raw mode, 1 connection, %s", size(c.ThroughputBytes)), "mb_per_s", "MB/s"},
	}
	for _, rw := range rows {
		d := r.metric(rw.scenario, rw.variant, direct, key(rw.metric))
		t := r.metric(rw.scenario, rw.variant, tunnel, key(rw.metric))
		s := r.metric(rw.scenario, rw.variant, stunnel, key(rw.metric))
		p("| %s | %s | %s | %s | %s | %s | %s |\n", rw.label, rw.unit, cell(d), cell(t), cell(s), ratioCell(ratio(t, s)), ratioCell(ratio(t, d)))
	}

	for _, s := range r.Series {
		if s.Scenario == "wan" && s.Target == tunnel {
			pl := r.metric("wan", s.Variant, plain, key("mb_per_s"))
			t := r.metric("wan", s.Variant, tunnel, key("mb_per_s"))
			p("\n**wan** (%s, %s on one connection through a user-space link emulator, `tunnel-load delay`; the tunnel's session crosses an identical one): plain TCP %s MB/s, tunnel %s MB/s, tunnel/plain %s.\n",
				s.Variant, size(c.WANBytes), cell(pl), cell(t), ratioCell(ratio(t, pl)))
		}
	}
	if r.find("streams", "", tunnel) != nil {
		hw := func(i int) stat {
			return r.metric("streams", "", tunnel, func(x sample) float64 { return x[fmt.Sprintf("procs.%d.hwm_kib", i)] / 1024 })
		}
		p("\n**streams** (%d idle streams through one session, one byte echoed on each): server VmHWM %s MiB, %s KiB per stream; client VmHWM %s MiB, %s KiB per stream (per stream: growth of the peak RSS over the RSS before the streams were opened). Opening them all took %s s.\n",
			c.StreamsCount, cell(hw(0)), cell(r.metric("streams", "", tunnel, perStreamKiB(0))), cell(hw(1)), cell(r.metric("streams", "", tunnel, perStreamKiB(1))),
			cell(r.metric("streams", "", tunnel, key("open_seconds"))))
	}
	if r.find("handshakes", "", tunnel) != nil {
		p("\n**handshakes** (%d clients, each with its own certificate and source address, start a session at once against one server with its defaults, each TCP + mutual TLS 1.3 + yamux + one ping; attempts reset over `--max-handshakes` redialled with the client's backoff): all up in %s s, median session up after %s ms, %s redials.\n",
			c.HandshakesCount, cell(r.metric("handshakes", "", tunnel, key("all_up_seconds"))), cell(r.metric("handshakes", "", tunnel, key("p50_ms"))),
			cell(r.metric("handshakes", "", tunnel, key("retries"))))
	}

	p("\n### Resources of the tunnel and stunnel processes\n\nPeak RSS (VmHWM) and CPU time of each process over the whole scenario (all rounds); CPU per GB for the bulk scenarios.\n\n")
	p("| scenario | target | server VmHWM | client VmHWM | server CPU | client CPU | CPU-s per GB, server / client |\n|---|---|---|---|---|---|---|\n")
	for _, s := range r.Series {
		if s.Usage == nil {
			continue
		}
		var moved float64
		for _, x := range s.Samples {
			moved += x["bytes"]
		}
		perGB := "–"
		if moved > 0 {
			perGB = fmt.Sprintf("%.2f / %.2f", s.Usage["server"].CPUSeconds/(moved/1e9), s.Usage["client"].CPUSeconds/(moved/1e9))
		}
		name := s.Scenario // all its variants ran on these processes
		p("| %s | %s | %.1f MiB | %.1f MiB | %.1f s | %.1f s | %s |\n", name, s.Target,
			float64(s.Usage["server"].HWMKiB)/1024, float64(s.Usage["client"].HWMKiB)/1024,
			s.Usage["server"].CPUSeconds, s.Usage["client"].CPUSeconds, perGB)
	}

	if len(r.Micro) > 0 {
		p("\n### Microbenchmarks (`go test -bench`)\n\n| package | benchmark | ns/op | MB/s | B/op | allocs/op |\n|---|---|---|---|---|---|\n")
		for _, m := range r.Micro {
			mb := "–"
			if m.MBps > 0 {
				mb = num(m.MBps)
			}
			p("| %s | %s | %s | %s | %.0f | %.0f |\n", m.Package, strings.TrimPrefix(m.Name, "Benchmark"), num(m.NsPerOp), mb, m.BPerOp, m.Allocs)
		}
	}
	return b.String()
}

func orNone(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}

// size formats a byte count as MiB or GiB.
func size(n int64) string {
	if n >= 1<<30 && n%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", n>>30)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

// Markers around the generated section of BENCHMARKS.md. Everything before
// the first and after the second is kept as it is (the hand-written intro,
// and sections others add below, such as pgbench).
const (
	beginMarker = "<!-- BEGIN GENERATED by scripts/bench: do not edit between these markers -->"
	endMarker   = "<!-- END GENERATED by scripts/bench -->"
)

// spliceGenerated returns doc with the text between the markers replaced
// by gen. A doc without the markers gets them, and gen, at its end.
func spliceGenerated(doc, gen string) string {
	block := beginMarker + "\n\n" + strings.TrimSpace(gen) + "\n\n" + endMarker
	i := strings.Index(doc, beginMarker)
	j := strings.Index(doc, endMarker)
	if i < 0 || j < i {
		if doc != "" && !strings.HasSuffix(doc, "\n") {
			doc += "\n"
		}
		if doc != "" {
			doc += "\n"
		}
		return doc + block + "\n"
	}
	return doc[:i] + block + doc[j+len(endMarker):]
}

// writeMarkdown updates the generated section of the file at path.
func writeMarkdown(path, gen string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	return os.WriteFile(path, []byte(spliceGenerated(string(old), gen)), 0o644)
}
