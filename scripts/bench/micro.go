package main

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// microPackages are the hot paths with Go microbenchmarks (*_bench_test.go
// and the copy loop's BenchmarkRun).
var microPackages = []string{"./internal/wire", "./netfilter", "./internal/pipe", "./internal/mux", "./trust", "./server"}

// micro is one microbenchmark result line.
type micro struct {
	Name     string  `json:"name"`
	Package  string  `json:"package"`
	NsPerOp  float64 `json:"ns_per_op"`
	MBps     float64 `json:"mb_per_s,omitempty"`
	BPerOp   float64 `json:"bytes_per_op"`
	Allocs   float64 `json:"allocs_per_op"`
	Iterates int64   `json:"iterations"`
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+(\d+)\s+(.*)$`)

// runMicro runs the microbenchmarks with -benchtime benchtime and parses them.
func runMicro(ctx context.Context, benchtime string) ([]micro, error) {
	args := append([]string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-benchtime", benchtime}, microPackages...)
	cmd := exec.CommandContext(ctx, "go", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return parseMicro(string(out)), nil
}

// parseMicro reads `go test -bench -benchmem` output.
func parseMicro(out string) []micro {
	var res []micro
	pkg := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimPrefix(p, "github.com/tunnel-dev/tunnel/")
			continue
		}
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		r := micro{Name: m[1], Package: pkg}
		r.Iterates, _ = strconv.ParseInt(m[2], 10, 64)
		f := strings.Fields(m[3])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				r.NsPerOp = v
			case "MB/s":
				r.MBps = v
			case "B/op":
				r.BPerOp = v
			case "allocs/op":
				r.Allocs = v
			}
		}
		res = append(res, r)
	}
	return res
}
