//go:build !windows

package pipe

// isPlatformReset reports nothing beyond isReset's ECONNRESET and EPIPE,
// which is how every platform but Windows reports a reset.
func isPlatformReset(error) bool { return false }
