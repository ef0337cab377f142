//go:build !linux && !freebsd

package main

import "syscall"

// childProcAttr is nil where the kernel has no parent-death signal (macOS,
// Windows): the demo stops its children when it ends, but a demo that is
// killed leaves them running until they next write to the closed log pipe.
func childProcAttr() *syscall.SysProcAttr { return nil }
