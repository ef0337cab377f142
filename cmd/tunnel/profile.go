package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
)

// startProfile starts the profiles the environment asks for and returns the
// function that writes them; the benchmark suite (scripts/bench --profile)
// uses it to profile the real processes. TUNNEL_CPUPROFILE=FILE writes a CPU
// profile, TUNNEL_MEMPROFILE=FILE a heap profile (allocations since start and
// memory in use at exit). It is a developer tool, so it is not a flag; a
// failure is reported on stderr and never stops the command.
func startProfile() (stop func()) {
	cpu, mem := os.Getenv("TUNNEL_CPUPROFILE"), os.Getenv("TUNNEL_MEMPROFILE")
	var cpuFile *os.File
	if cpu != "" {
		f, err := os.Create(cpu)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "tunnel: TUNNEL_CPUPROFILE=%s: %v\n", cpu, err)
		} else {
			cpuFile = f
		}
	}
	return func() {
		if cpuFile != nil {
			pprof.StopCPUProfile()
			cpuFile.Close()
		}
		if mem == "" {
			return
		}
		f, err := os.Create(mem)
		if err == nil {
			runtime.GC() // up-to-date in-use figures
			err = pprof.Lookup("allocs").WriteTo(f, 0)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "tunnel: TUNNEL_MEMPROFILE=%s: %v\n", mem, err)
		}
	}
}
