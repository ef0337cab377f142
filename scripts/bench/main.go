// Command bench is the benchmark suite: it builds the tunnel and the load
// tool (cmd/tunnel-load), starts the backends, tunnel and stunnel pairs, and
// runs every scenario against direct TCP, the tunnel and stunnel,
// interleaved, then writes docs/BENCHMARKS.md (between its markers) and the
// raw figures as JSON. `make bench` runs it in full, `make bench-smoke` runs
// one round of small sizes (CI), writing nothing under docs/.
//
//	go run ./scripts/bench [--smoke] [--rounds N] [--only throughput,connrate] [--profile DIR]
//
// It installs nothing. Without stunnel it skips the stunnel target and says
// so loudly, unless CI is set, in which case it fails.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		var ue *usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

var start = time.Now()

// logf prints a progress line on stderr.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	smoke := fs.Bool("smoke", false, "one round of small sizes, as CI runs it; writes nothing under docs/ unless --md/--json say so")
	rounds := fs.Int("rounds", 0, "rounds per scenario (default 5; 1 with --smoke)")
	only := fs.String("only", "", "comma-separated scenarios to run (default all): "+scenarioNames())
	md := fs.String("md", "", "Markdown file whose generated section to update (default docs/BENCHMARKS.md; none with --smoke)")
	jsonOut := fs.String("json", "", "file for the raw figures (default docs/bench/latest.json; none with --smoke)")
	profile := fs.String("profile", "", "directory for CPU and heap profiles of every tunnel process (SCENARIO-ROLE.cpu.pprof, .mem.pprof)")
	micro := fs.Bool("micro", true, "run the Go microbenchmarks too")
	render := fs.String("render", "", "measure nothing: rewrite --md (default docs/BENCHMARKS.md) from the figures in this JSON file")
	tunnelBin := fs.String("tunnel-bin", "", "use this tunnel binary instead of building ./cmd/tunnel (A/B comparisons against another build)")
	var tunnelEnv envList
	fs.Var(&tunnelEnv, "tunnel-env", "KEY=VALUE added to the environment of every tunnel process, for experiments (GOMAXPROCS=1, GOGC=200); repeatable")
	if err := fs.Parse(args); err != nil {
		return &usageError{err.Error()}
	}
	cfg, mode := fullConfig, "full"
	if *smoke {
		cfg, mode = smokeConfig, "smoke"
	}
	if *rounds < 0 {
		return &usageError{fmt.Sprintf("--rounds: %d is negative", *rounds)}
	}
	if *rounds > 0 {
		cfg.Rounds = *rounds
	}
	if !*smoke {
		if *md == "" {
			*md = "docs/BENCHMARKS.md"
		}
		if *jsonOut == "" {
			*jsonOut = "docs/bench/latest.json"
		}
	}
	if *render != "" {
		return renderJSON(*render, *md)
	}
	selected := scenarios
	if *only != "" {
		selected = nil
		for name := range strings.SplitSeq(*only, ",") {
			i := slices.IndexFunc(scenarios, func(s scenario) bool { return s.name == name })
			if i < 0 {
				return &usageError{fmt.Sprintf("--only: unknown scenario %q (have %s)", name, scenarioNames())}
			}
			selected = append(selected, scenarios[i])
		}
	}
	if err := chdirModuleRoot(); err != nil {
		return err
	}

	w := &world{stunnel: findStunnel(), env: tunnelEnv}
	if w.stunnel == "" {
		if os.Getenv("CI") != "" {
			return errors.New("stunnel is not installed and CI is set: the comparison must run in CI (apt-get install stunnel4)")
		}
		logf("!!! stunnel NOT FOUND: running WITHOUT the stunnel comparison (apt-get install stunnel4). Ratios to stunnel will be missing.")
	}
	dir, err := os.MkdirTemp("", "tunnel-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	w.dir, w.pki = dir, filepath.Join(dir, "pki")
	if *profile != "" {
		if w.profile, err = filepath.Abs(*profile); err != nil {
			return err
		}
		if err := os.MkdirAll(w.profile, 0o755); err != nil {
			return err
		}
	}
	logf("building bin: tunnel, tunnel-load")
	if w.tunnel, w.load, err = build(ctx, dir); err != nil {
		return err
	}
	if *tunnelBin != "" {
		if w.tunnel, err = filepath.Abs(*tunnelBin); err != nil {
			return err
		}
		logf("using tunnel binary %s", w.tunnel)
	}
	if err := makePKI(w.pki); err != nil {
		return err
	}
	if err := w.startBackends(); err != nil {
		return err
	}
	defer w.backends.stop()

	rep := &report{Generated: time.Now().UTC().Format(time.RFC3339), Mode: mode, Machine: describeMachine(w.stunnel), Config: cfg}
	for _, sc := range selected {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		logf("scenario %s", sc.name)
		out, err := sc.run(ctx, w, cfg)
		if err != nil {
			return fmt.Errorf("scenario %s: %w", sc.name, err)
		}
		rep.Series = append(rep.Series, out...)
	}
	if *micro {
		bt := "1s"
		if *smoke {
			bt = "20x"
		}
		logf("microbenchmarks (-benchtime %s)", bt)
		if rep.Micro, err = runMicro(ctx, bt); err != nil {
			return err
		}
	}
	rep.Verdicts = rep.verdicts()
	gen := rep.markdown()
	fmt.Println(gen)
	if *jsonOut != "" {
		if err := os.MkdirAll(filepath.Dir(*jsonOut), 0o755); err != nil {
			return err
		}
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
		logf("wrote %s", *jsonOut)
	}
	if *md != "" {
		if err := writeMarkdown(*md, gen+rerunNote); err != nil {
			return err
		}
		logf("wrote %s", *md)
	}
	logf("done")
	return nil
}

// envList is a repeatable KEY=VALUE flag.
type envList []string

func (e *envList) String() string { return strings.Join(*e, " ") }

func (e *envList) Set(v string) error {
	if k, _, ok := strings.Cut(v, "="); !ok || k == "" {
		return fmt.Errorf("%q is not KEY=VALUE", v)
	}
	*e = append(*e, v)
	return nil
}

// rerunNote ends the generated section.
const rerunNote = "\nRerun: `apt-get install stunnel4`, then `make bench` (about 4 minutes; it rewrites this section and docs/bench/latest.json). `make bench-smoke` is the one-round CI version.\n"

// renderJSON rewrites the generated section of md from a JSON report.
func renderJSON(file, md string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var rep report
	if err := json.Unmarshal(b, &rep); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	rep.Verdicts = rep.verdicts()
	if md == "" {
		md = "docs/BENCHMARKS.md"
	}
	if err := writeMarkdown(md, rep.markdown()+rerunNote); err != nil {
		return err
	}
	logf("rendered %s from %s", md, file)
	return nil
}

func scenarioNames() string {
	var names []string
	for _, s := range scenarios {
		names = append(names, s.name)
	}
	return strings.Join(names, ",")
}

// chdirModuleRoot moves to the directory of the main module's go.mod, so
// relative paths (./cmd/tunnel, docs/) mean the same from anywhere.
func chdirModuleRoot() error {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return errors.New("not inside the tunnel module")
	}
	return os.Chdir(filepath.Dir(gomod))
}

func describeMachine(stunnelBin string) machine {
	m := machine{Cores: runtime.NumCPU()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.Load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	if out, err := exec.Command("go", "version").Output(); err == nil {
		m.Go = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	if stunnelBin != "" {
		// stunnel -version prints to stderr and exits non-zero.
		out, _ := exec.Command(stunnelBin, "-version").CombinedOutput()
		var parts []string
		for line := range strings.SplitSeq(string(out), "\n") {
			line = strings.TrimSpace(line)
			if strings.HasPrefix(line, "stunnel ") || strings.HasPrefix(line, "Running  with") || strings.HasPrefix(line, "Running with") {
				parts = append(parts, strings.Join(strings.Fields(line), " "))
			}
		}
		m.Stunnel = strings.Join(parts, ", ")
	}
	return m
}
