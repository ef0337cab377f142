//go:build !linux && !freebsd

package main

import "syscall"

// childProcAttr is nil where the kernel has no parent-death signal (macOS,
// Windows): the demo stops its children when it ends, but a demo that is
// killed leaves them running (on macOS until a log line to the closed pipe
// raises SIGPIPE; on Windows until they are stopped).
func childProcAttr() *syscall.SysProcAttr { return nil }
