//go:build unix

package pipe

import (
	"io"
	"net"
	"os"
	"syscall"
)

// readMore reads into b what src has already received, without waiting.
// A socket (syscall.Conn) is read once without blocking; another conn (a
// yamux stream, a TLS conn) goes through readMoreDeadline. It returns the
// error of that read unless it only says nothing was there (EAGAIN, a
// timeout); an error it hides, the next Read reports.
func readMore(src net.Conn, b []byte) (int, error) {
	sc, ok := src.(syscall.Conn)
	if !ok {
		return readMoreDeadline(src, b)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, nil
	}
	var n int
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		n, rerr = syscall.Read(int(fd), b)
		return true // never wait
	}); err != nil {
		return 0, nil // closed, or a deadline: the next Read says which
	}
	switch {
	case rerr == syscall.EAGAIN || rerr == syscall.EINTR:
		return 0, nil
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}
