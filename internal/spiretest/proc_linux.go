package spiretest

import "syscall"

// sysProcAttr makes a SPIRE process die with the test binary, so a test
// that is killed leaves none behind.
func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }
