package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/pipe"
)

// fieldServer names the server a raw connection went to.
const fieldServer = "server"

// serveRaw carries one local connection over its own plain mutual-TLS
// connection to a server (Raw mode): no ALPN, no yamux, no stream header,
// which is what a stunnel or ghostunnel server speaks. It closes lc.
func (c *Client) serveRaw(ctx context.Context, lc net.Conn, f Forward) {
	defer lc.Close()
	c.streamsTotal.Add(1)
	c.streamsActive.Add(1)
	defer c.streamsActive.Add(-1)
	log := c.log.WithFields(logrus.Fields{audit.Route: f.Route, audit.Addr: lc.RemoteAddr().String()})

	tc, server, err := c.dialRaw(ctx, log)
	if err != nil {
		c.streamsFailed.Add(1)
		log.WithFields(logrus.Fields{audit.Event: audit.StreamRefused, audit.Reason: "session_unavailable", audit.Error: err.Error()}).
			Warn("closing local connection: no server answered")
		return
	}
	log = log.WithFields(logrus.Fields{fieldServer: server, audit.SessionID: audit.NewSessionID()}) // one connection, one session
	log.WithFields(logrus.Fields{audit.Event: audit.StreamOpened, "tls_version": tls.VersionName(tc.ConnectionState().Version)}).
		Debug("raw connection opened")
	start := time.Now()
	out, in, err := pipe.Run(lc, tc, pipe.Options{Idle: c.cfg.IdleTimeout, Memory: c.memory})
	// In TLS 1.3 a server that refuses our certificate says so with the
	// first read: the error, if any, is its alert.
	log.WithFields(audit.StreamClosedFields(out, in, start, err)).Info("stream closed")
}

// dialRaw dials the servers in turn, starting with the one that answered
// last, until one completes a handshake, each dial within DialTimeout and
// all of them within ConnectTimeout. It returns the connection and the
// server's address. Each failure is logged as session_failed.
func (c *Client) dialRaw(ctx context.Context, log *logrus.Entry) (*tls.Conn, string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
	defer cancel()
	start := c.servers.first()
	var errs []error
	for failed := range len(c.servers.addrs) {
		i, addr := c.servers.pick(start, failed)
		dctx, dcancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
		tc, err := dialTLS(dctx, c.cfg, addr)
		dcancel()
		if err == nil {
			c.servers.good(i)
			return tc, addr, nil
		}
		log.WithFields(logrus.Fields{
			audit.Event: audit.SessionFailed, audit.Reason: dialReason(err), fieldServer: addr, audit.Error: err.Error(),
		}).Warn("cannot reach the server")
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, "", fmt.Errorf("client: raw dial: %w", errors.Join(errs...))
}
