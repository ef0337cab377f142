//go:build unix

package systemd

// supported: sockets passed by file descriptor exist on every unix; systemd
// (or systemd-socket-activate) is what passes them.
const supported = true
