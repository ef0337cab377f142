//go:build linux || freebsd

package main

import "syscall"

// childProcAttr makes the kernel send a child sig if the runner dies.
func childProcAttr(sig syscall.Signal) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: sig}
}
