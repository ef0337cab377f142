//go:build !unix

package systemd

// supported: Windows has no descriptor passing of this kind; a
// "systemd:NAME" address is an error there (errUnsupported).
const supported = false
