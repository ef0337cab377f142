//go:build !linux

package ocsptest

import "syscall"

func sysProcAttr() *syscall.SysProcAttr { return nil }
