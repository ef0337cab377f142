package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a child process of the runner: a tunnel end, a stunnel, a backend
// or a delay proxy. Its output lines are kept (the last ones for a failure
// report, and JSON ones for their events).
type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}

	mu    sync.Mutex
	lines []string         // the last 40 lines; guarded by mu
	json  []map[string]any // every JSON line; guarded by mu
}

// startProc starts bin with args and env added to the runner's. The child
// gets SIGTERM if the runner dies.
func startProc(name, bin string, env []string, args ...string) (*proc, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = childProcAttr(syscall.SIGTERM)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, exited: make(chan struct{})}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.add(sc.Text())
		}
		io.Copy(io.Discard, pr)
	}()
	go func() {
		cmd.Wait()
		pw.Close()
		<-scanned
		close(p.exited)
	}()
	return p, nil
}

func (p *proc) add(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lines = append(p.lines, line)
	if len(p.lines) > 40 {
		p.lines = p.lines[1:]
	}
	if strings.HasPrefix(line, "{") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			p.json = append(p.json, m)
		}
	}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) tail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return "  " + strings.Join(p.lines, "\n  ")
}

// waitLine waits until a line satisfies match and returns it (JSON lines as
// their map; other lines as {"line": text}).
func (p *proc) waitLine(d time.Duration, what string, match func(m map[string]any, line string) bool) (map[string]any, error) {
	deadline := time.Now().Add(d)
	seenJSON, seenText := 0, 0
	var all []string
	for {
		p.mu.Lock()
		js := p.json[seenJSON:]
		seenJSON = len(p.json)
		all = append(all[:0], p.lines...)
		p.mu.Unlock()
		for _, m := range js {
			if match(m, "") {
				return m, nil
			}
		}
		for _, l := range all[min(seenText, len(all)):] {
			if match(nil, l) {
				return map[string]any{"line": l}, nil
			}
		}
		seenText = len(all)
		select {
		case <-p.exited:
			return nil, fmt.Errorf("%s exited before %s:\n%s", p.name, what, p.tail())
		case <-time.After(20 * time.Millisecond): // poll interval
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: no %s within %v:\n%s", p.name, what, d, p.tail())
		}
	}
}

// event waits for the JSON log event named ev whose fields include kv.
func (p *proc) event(d time.Duration, ev string, kv ...string) (map[string]any, error) {
	return p.waitLine(d, "event "+ev+" "+strings.Join(kv, " "), func(m map[string]any, _ string) bool {
		if m == nil || m["event"] != ev {
			return false
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if fmt.Sprint(m[kv[i]]) != kv[i+1] {
				return false
			}
		}
		return true
	})
}

// stop sends SIGTERM, waits up to 10 s (a profile is written on the way
// out), then kills.
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// usage is what /proc says about a process: peak RSS and CPU time used.
type usage struct {
	HWMKiB     int64   `json:"hwm_kib"`
	CPUSeconds float64 `json:"cpu_seconds"`
}

// procUsage reads VmHWM from /proc/PID/status and utime+stime from
// /proc/PID/stat.
func procUsage(pid int) (usage, error) {
	var u usage
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			u.HWMKiB, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	rest := string(stat[strings.LastIndexByte(string(stat), ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		return u, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, _ := strconv.ParseFloat(f[11], 64) // utime: field 14 of stat
	st, _ := strconv.ParseFloat(f[12], 64) // stime: field 15
	u.CPUSeconds = (ut + st) / clockTicks
	return u, nil
}

// clockTicks is USER_HZ, 100 on every Linux platform Go supports.
const clockTicks = 100

// runJSON runs bin with args (bounded by ctx) and decodes its stdout, one JSON
// object, into a map of numbers.
func runJSON(ctx context.Context, bin string, args ...string) (map[string]float64, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.SysProcAttr = childProcAttr(syscall.SIGKILL)
	cmd.WaitDelay = 5 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	var raw map[string]any
	if err := json.Unmarshal(out, &raw); err != nil {
		return nil, fmt.Errorf("%s %s: output %q: %w", bin, args[0], out, err)
	}
	res := map[string]float64{}
	flatten("", raw, res)
	return res, nil
}

// flatten turns nested JSON numbers into "a.b" keys (arrays by index).
func flatten(prefix string, v any, out map[string]float64) {
	switch v := v.(type) {
	case float64:
		out[prefix] = v
	case map[string]any:
		for k, x := range v {
			if prefix != "" {
				k = prefix + "." + k
			}
			flatten(k, x, out)
		}
	case []any:
		for i, x := range v {
			flatten(fmt.Sprintf("%s.%d", prefix, i), x, out)
		}
	}
}
