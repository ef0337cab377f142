//go:build !linux && !freebsd

package main

import "syscall"

// childProcAttr is nil where the kernel has no parent-death signal: the
// benchmark runs on Linux; elsewhere it only has to compile.
func childProcAttr(syscall.Signal) *syscall.SysProcAttr { return nil }
