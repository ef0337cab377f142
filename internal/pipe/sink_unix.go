//go:build unix

package pipe

import (
	"net"
	"syscall"
)

// tryWriter returns a function that writes to dst what its socket takes at
// once, in one non-blocking write, and never waits for room; nil if dst is
// not a socket (syscall.Conn). An error it returns (EAGAIN included) only
// means nothing was written: the direction's own write reports real ones.
func tryWriter(dst net.Conn) func([]byte) int {
	sc, ok := dst.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return func(b []byte) int {
		var n int
		var werr error
		if err := rc.Write(func(fd uintptr) bool {
			n, werr = syscall.Write(int(fd), b)
			return true // one attempt: never wait
		}); err != nil || werr != nil || n < 0 {
			return 0 // closed, a passed deadline, EAGAIN, a reset: the direction's write finds out
		}
		return n
	}
}
