//go:build unix

package e2e

import (
	"syscall"
	"testing"
)

// raiseNoFile makes sure this process, and the tunnel processes it starts
// (which inherit the limit), may hold n open files: the attacks below hold
// thousands of connections at both ends.
func raiseNoFile(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if uint64(lim.Cur) >= n { // int64 on FreeBSD
		return
	}
	if uint64(lim.Max) < n {
		t.Fatalf("RLIMIT_NOFILE hard limit is %d; this test needs %d (raise ulimit -Hn)", lim.Max, n)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("raise RLIMIT_NOFILE to %d: %v", lim.Max, err)
	}
}
