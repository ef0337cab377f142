package main

import (
	"context"
	"errors"
	"net"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/admin"
	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/config"
)

// startAdmin starts the admin listener if s has one and returns a function
// that stops it and waits. cfg.Reload is the reload loop's request, so POST
// /reload reloads as SIGHUP does, on every platform.
func startAdmin(ctx context.Context, log *logrus.Entry, s *config.Settings, token *admin.Token, cfg admin.Config) (stop func(), err error) {
	if s.Admin.Addr == "" {
		return func() {}, nil
	}
	alog := log.WithField(audit.Component, "admin")
	cfg.Log = alog
	cfg.Token = token.Get
	h, err := admin.NewHandler(cfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", s.Admin.Addr)
	if err != nil {
		h.Close()
		return nil, &configError{err: errors.New(s.Values.At("admin", "%v", err).String())}
	}
	alog.WithFields(logrus.Fields{audit.Event: audit.ListenerStarted, audit.Listen: ln.Addr().String(),
		"token": token.Path() != ""}).Info("admin listening")
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := admin.Serve(ctx, ln, h); err != nil {
			alog.WithError(err).Error("admin listener failed")
		}
	}()
	return func() { cancel(); <-done; h.Close() }, nil
}
