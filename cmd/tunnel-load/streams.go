package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ProcMem is a process's memory as /proc/PID/status reports it, in KiB.
type ProcMem struct {
	PID         int   `json:"pid"`
	RSSBeforeKB int64 `json:"rss_before_kib"` // VmRSS before the streams were opened
	RSSKB       int64 `json:"rss_kib"`        // VmRSS with all streams open
	HWMKB       int64 `json:"hwm_kib"`        // VmHWM, the peak RSS since the process started
}

// StreamsResult is what the streams command prints.
type StreamsResult struct {
	Count       int       `json:"count"`
	OpenSeconds float64   `json:"open_seconds"` // to open all and echo one byte on each
	Procs       []ProcMem `json:"procs"`
}

// cmdStreams opens --count connections to an echo address, echoes one byte
// on each (so each is a live stream end to end) and holds them all open;
// then it reads the memory of the --pids processes and closes everything.
func cmdStreams(ctx context.Context, fs *flag.FlagSet, args []string, stdout io.Writer) error {
	addr := fs.String("addr", "", "echo address (a tunnel client's forward)")
	count := fs.Int("count", 10000, "connections to hold open at once")
	pidList := fs.String("pids", "", "comma-separated PIDs whose memory to report")
	if err := parse(fs, args, "addr"); err != nil {
		return err
	}
	if err := positive(map[string]int64{"count": int64(*count)}); err != nil {
		return err
	}
	var pids []int
	for f := range strings.SplitSeq(*pidList, ",") {
		if f == "" {
			continue
		}
		pid, err := strconv.Atoi(f)
		if err != nil {
			return &usageError{fmt.Sprintf("--pids: %q is not a PID", f)}
		}
		pids = append(pids, pid)
	}
	res := StreamsResult{Count: *count}
	for _, pid := range pids {
		m, err := readMem(pid)
		if err != nil {
			return err
		}
		res.Procs = append(res.Procs, ProcMem{PID: pid, RSSBeforeKB: m.rss})
	}

	conns := make([]io.Closer, 0, *count)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	var mu sync.Mutex
	var first error
	sem := make(chan struct{}, 64) // dials in flight: stay under listen backlogs
	var wg sync.WaitGroup
	for i := range *count {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := dial(ctx, *addr)
			if err == nil {
				b := []byte{byte(i)}
				if _, err = c.Write(b); err == nil {
					_, err = io.ReadFull(c, b)
				}
				if err == nil && b[0] != byte(i) {
					err = fmt.Errorf("echo returned %d, sent %d", b[0], byte(i))
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if c != nil {
				conns = append(conns, c)
			}
			if err != nil && first == nil {
				first = fmt.Errorf("stream %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	res.OpenSeconds = time.Since(start).Seconds()
	for i, pid := range pids {
		m, err := readMem(pid)
		if err != nil {
			return err
		}
		res.Procs[i].RSSKB, res.Procs[i].HWMKB = m.rss, m.hwm
	}
	return emit(stdout, res)
}

type mem struct{ rss, hwm int64 }

// readMem reads VmRSS and VmHWM (KiB) from /proc/PID/status.
func readMem(pid int) (mem, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return mem{}, err
	}
	defer f.Close()
	var m mem
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *int64
		switch k {
		case "VmRSS":
			dst = &m.rss
		case "VmHWM":
			dst = &m.hwm
		default:
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return mem{}, fmt.Errorf("/proc/%d/status: %s: %w", pid, k, err)
		}
		*dst = n
	}
	return m, sc.Err()
}
