package pipe

import (
	"errors"
	"syscall"
)

// isPlatformReset reports Winsock's codes for a peer's reset and for a
// connection the stack aborted (a write to a peer that had gone), which
// Windows returns instead of ECONNRESET and EPIPE.
func isPlatformReset(err error) bool {
	return errors.Is(err, syscall.WSAECONNRESET) || errors.Is(err, syscall.WSAECONNABORTED)
}
