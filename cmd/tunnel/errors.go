package main

import (
	"errors"
	"fmt"
)

// Exit statuses.
const (
	exitOK      = 0
	exitRuntime = 1 // a failure after start-up, already logged
	exitConfig  = 2 // bad flags or files; nothing was started
)

// configError is a problem with what the operator gave us. It is printed as
// one line naming the flag, and the process exits 2 before starting anything.
type configError struct {
	flag string // "--allow", or "" when no single flag is at fault
	err  error
}

func (e *configError) Error() string {
	if e.flag == "" {
		return e.err.Error()
	}
	return e.flag + ": " + e.err.Error()
}

func (e *configError) Unwrap() error { return e.err }

func flagError(flag string, format string, args ...any) error {
	return &configError{flag: flag, err: fmt.Errorf(format, args...)}
}

// loggedError is a runtime failure that was already logged as an event; it
// only sets the exit status.
type loggedError struct{ err error }

func (e *loggedError) Error() string { return e.err.Error() }
func (e *loggedError) Unwrap() error { return e.err }

// exitCode maps the error a command returned to the process exit status.
func exitCode(err error) int {
	var ce *configError
	var le *loggedError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ce):
		return exitConfig
	case errors.As(err, &le):
		return exitRuntime
	}
	return exitRuntime
}
