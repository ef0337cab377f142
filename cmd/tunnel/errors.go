package main

import (
	"errors"
	"fmt"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/config"
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

// problemsError is a config file with problems; every one is listed by
// `tunnel check`, and a start prints the first (exit 2).
type problemsError struct{ list []config.Problem }

func (e *problemsError) Error() string {
	s := e.list[0].String()
	if n := len(e.list) - 1; n > 0 {
		s += fmt.Sprintf(" (and %d more; `tunnel check` lists them all)", n)
	}
	return s
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

// fatal logs a runtime failure as one event and returns it for the exit
// status.
func fatal(log *logrus.Entry, err error, msg string) error {
	log.WithError(err).Error(msg)
	return &loggedError{fmt.Errorf("%s: %w", msg, err)}
}
