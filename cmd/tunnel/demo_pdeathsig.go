//go:build linux || freebsd

package main

import "syscall"

// childProcAttr makes the kernel send the demo's children SIGTERM when the
// demo dies without stopping them (killed, crashed).
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
