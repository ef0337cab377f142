package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSpliceGenerated(t *testing.T) {
	intro := "# Benchmarks\n\nHand-written intro.\n\n"
	after := "\n\n## PostgreSQL (pgbench)\n\nAdded by hand later.\n"
	tests := []struct {
		name, doc, want string
	}{
		{"empty file", "", beginMarker + "\n\nGEN\n\n" + endMarker + "\n"},
		{"no markers: appended, text kept", "# Title\nintro", "# Title\nintro\n\n" + beginMarker + "\n\nGEN\n\n" + endMarker + "\n"},
		{"markers: only between them replaced",
			intro + beginMarker + "\n\nold table\n\n" + endMarker + after,
			intro + beginMarker + "\n\nGEN\n\n" + endMarker + after},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := spliceGenerated(tt.doc, "\nGEN\n"); got != tt.want {
				t.Errorf("spliceGenerated(%q) =\n%q\nwant\n%q", tt.doc, got, tt.want)
			}
		})
	}
	// Twice in a row changes nothing more.
	doc := spliceGenerated(intro+after, "A")
	if again := spliceGenerated(doc, "A"); again != doc {
		t.Errorf("second splice changed the document:\n%q\n%q", doc, again)
	}
}

func TestWriteMarkdownKeepsOtherSections(t *testing.T) {
	path := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	pg := "## PostgreSQL\n\npgbench figures\n"
	if err := os.WriteFile(path, []byte("intro\n"+beginMarker+"\nold\n"+endMarker+"\n"+pg), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeMarkdown(path, "new table"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	got := string(b)
	if !strings.HasPrefix(got, "intro\n") || !strings.HasSuffix(got, pg) || !strings.Contains(got, "new table") || strings.Contains(got, "old") {
		t.Errorf("after writeMarkdown:\n%s", got)
	}
}

func TestStatOf(t *testing.T) {
	if s := statOf([]float64{5, 1, 3}); s != (stat{3, 1, 5}) {
		t.Errorf("statOf(5,1,3) = %+v", s)
	}
	if s := statOf([]float64{4, 1, 3, 2}); s != (stat{2.5, 1, 4}) {
		t.Errorf("statOf(4,1,3,2) = %+v", s)
	}
	if s := statOf(nil); s.ok() {
		t.Errorf("statOf(nil) = %+v, want not ok", s)
	}
}

// The verdicts compare medians of tunnel and stunnel from the same run.
func TestVerdicts(t *testing.T) {
	r := &report{Series: []*series{
		{Scenario: "throughput", Target: tunnel, Samples: []sample{{"mb_per_s": 900}, {"mb_per_s": 1000}, {"mb_per_s": 5000}}},
		{Scenario: "throughput", Target: stunnel, Samples: []sample{{"mb_per_s": 500}, {"mb_per_s": 600}, {"mb_per_s": 100}}},
		{Scenario: "pingpong", Target: tunnel, Samples: []sample{{"p50_us": 40, "p99_us": 300}}},
		{Scenario: "pingpong", Target: stunnel, Samples: []sample{{"p50_us": 100, "p99_us": 200}}},
		{Scenario: "streams", Target: tunnel, Samples: []sample{{"count": 1000, "procs.0.hwm_kib": 30000, "procs.0.rss_before_kib": 10000}}},
		{Scenario: "handshakes", Target: tunnel, Samples: []sample{{"all_up_seconds": 1}, {"all_up_seconds": 6}}},
	}}
	got := map[string]verdict{}
	for _, v := range r.verdicts() {
		got[v.Name] = v
	}
	for name, want := range map[string]struct {
		value float64
		met   *bool
	}{
		"throughput, 1 stream":                        {1000.0 / 500, ptr(true)},
		"pingpong p50":                                {0.4, ptr(true)},
		"pingpong p99":                                {1.5, ptr(false)},
		"streams: server RSS per idle stream":         {20, ptr(true)},
		"handshakes: sessions all up (slowest round)": {6, ptr(false)},
		"connrate c=1":                                {math.NaN(), nil},
	} {
		v := got[name]
		if !(v.Value == want.value || math.IsNaN(v.Value) && math.IsNaN(want.value)) || (v.Met == nil) != (want.met == nil) || v.Met != nil && *v.Met != *want.met {
			t.Errorf("%s: value %v met %v, want %v met %v", name, v.Value, deref(v.Met), want.value, deref(want.met))
		}
	}
}

func ptr(b bool) *bool { return &b }

func deref(b *bool) any {
	if b == nil {
		return "not measured"
	}
	return *b
}

func TestParseMicro(t *testing.T) {
	out := `goos: linux
pkg: github.com/tunnel-dev/tunnel/netfilter
BenchmarkAllowlistContainsScaling/cidrs=10000-2   	 4224454	        54.47 ns/op	       0 B/op	       0 allocs/op
pkg: github.com/tunnel-dev/tunnel/internal/mux
BenchmarkStreamOverTLS/transport/chunk=64KiB-2  	   31838	     36617 ns/op	1789.79 MB/s	    2024 B/op	       4 allocs/op
PASS
`
	got := parseMicro(out)
	want := []micro{
		{Name: "BenchmarkAllowlistContainsScaling/cidrs=10000", Package: "netfilter", NsPerOp: 54.47, Iterates: 4224454},
		{Name: "BenchmarkStreamOverTLS/transport/chunk=64KiB", Package: "internal/mux", NsPerOp: 36617, MBps: 1789.79, BPerOp: 2024, Allocs: 4, Iterates: 31838},
	}
	if len(got) != len(want) {
		t.Fatalf("parseMicro = %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("parseMicro line %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestFlatten(t *testing.T) {
	out := map[string]float64{}
	flatten("", map[string]any{"a": 1.0, "procs": []any{map[string]any{"hwm_kib": 2.0}}, "s": "text"}, out)
	if len(out) != 2 || out["a"] != 1 || out["procs.0.hwm_kib"] != 2 {
		t.Errorf("flatten = %v", out)
	}
}
