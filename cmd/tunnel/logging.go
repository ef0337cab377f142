package main

import (
	"fmt"
	"io"

	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"
)

func logFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: []string{"TUNNEL_LOG_FORMAT"}, Usage: "log format: text or json"},
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{"TUNNEL_LOG_LEVEL"}, Usage: "log level: debug, info, warn or error"},
	}
}

// newLogger builds the process logger from --log-format and --log-level.
// Logs go to w (stderr); the returned entry carries component.
func newLogger(c *cli.Context, w io.Writer, component string) (*logrus.Entry, error) {
	l := logrus.New()
	l.SetOutput(w)
	switch f := c.String("log-format"); f {
	case "text":
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, DisableColors: true})
	case "json":
		l.SetFormatter(&logrus.JSONFormatter{})
	default:
		return nil, flagError("--log-format", "%q is not text or json", f)
	}
	lvl, err := logrus.ParseLevel(c.String("log-level"))
	if err != nil || lvl > logrus.DebugLevel || lvl < logrus.ErrorLevel {
		return nil, flagError("--log-level", "%q is not debug, info, warn or error", c.String("log-level"))
	}
	l.SetLevel(lvl)
	return l.WithField("component", component), nil
}

// fatal logs a runtime failure as one event and returns it for the exit
// status.
func fatal(log *logrus.Entry, err error, msg string) error {
	log.WithError(err).Error(msg)
	return &loggedError{fmt.Errorf("%s: %w", msg, err)}
}
