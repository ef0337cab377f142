package client

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/tunnel-dev/tunnel/internal/alive"
	"github.com/tunnel-dev/tunnel/internal/wire"
	"github.com/tunnel-dev/tunnel/trust"
)

// Session and Forwards show the live session (id, server, bytes as they
// move) and the forward's connections; the stream's lines carry the
// session's session_id; CloseSession ends the session (reason
// admin_close), the keeper dials again and Reconnects counts it; Alive
// holds while Run runs and fails once it returned.
func TestClientStatusCloseAndReconnects(t *testing.T) {
	pki := newTestPKI(t)
	fs := newFakeServer(t, "127.0.0.1:0", serverTLS(pki), func(_ string, st *yamux.Stream) {
		wire.WriteStatus(st, wire.StatusOK)
		io.Copy(st, st)
	})
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	c, err := New(Config{
		Server:     fs.ln.Addr().String(),
		TLS:        func() *tls.Config { return trust.ClientConfig(pki.client, "srv.test", []string{trust.ALPNTunnel}) },
		Forwards:   []Forward{{Listen: "127.0.0.1:0", Route: "echo"}},
		BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		Log: logrus.NewEntry(logger),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Alive(); !errors.Is(err, alive.ErrNotStarted) {
		t.Errorf("Alive before Run = %v, want ErrNotStarted", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 10*time.Second, func() bool { return c.Session().Up && len(c.Forwards()) == 1 })
	if err := c.Alive(); err != nil {
		t.Errorf("Alive while running = %v", err)
	}

	conn, err := net.Dial("tcp", c.Forwards()[0].Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("12345")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(conn, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	s := c.Session()
	waitFor(t, 5*time.Second, func() bool { s = c.Session(); return s.BytesOut == 5 && s.BytesIn == 5 })
	if len(s.ID) != 8 || s.Server != fs.ln.Addr().String() || s.Streams != 1 || s.Identity.CommonName == "" {
		t.Errorf("Session() = %+v", s)
	}
	if f := c.Forwards()[0]; f.Route != "echo" || f.Open != 1 || f.Total != 1 || f.Listen != "127.0.0.1:0" {
		t.Errorf("Forwards()[0] = %+v", f)
	}
	conn.Close()
	waitFor(t, 5*time.Second, func() bool {
		return hasLine(hook, "event", "stream_closed", "session_id", s.ID)
	})

	if err := c.CloseSession("nope"); !errors.Is(err, ErrNoSession) {
		t.Errorf("CloseSession(unknown) = %v, want ErrNoSession", err)
	}
	if err := c.CloseSession(s.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool {
		return hasLine(hook, "event", "session_closed", "reason", "admin_close", "session_id", s.ID) &&
			c.Session().Up && c.Session().ID != s.ID
	})
	if n := c.Stats().Reconnects; n != 1 {
		t.Errorf("Stats().Reconnects = %d after one reconnect, want 1", n)
	}
	cancel()
	<-done
	done <- nil
	if err := c.Alive(); !errors.Is(err, alive.ErrStopped) {
		t.Errorf("Alive after Run = %v, want ErrStopped", err)
	}
}

func hasLine(h *logtest.Hook, kv ...string) bool {
	for _, e := range h.AllEntries() {
		ok := true
		for i := 0; i+1 < len(kv); i += 2 {
			if s, _ := e.Data[kv[i]].(string); s != kv[i+1] {
				ok = false
			}
		}
		if ok {
			return true
		}
	}
	return false
}
