package client

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/tunnel-dev/tunnel/trust"
)

// freeLocal returns a loopback address that was free a moment ago.
func freeLocal(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func accepts(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// SetForwards opens the new forwards' listeners and closes the old ones;
// a port that cannot be bound changes nothing.
func TestSetForwards(t *testing.T) {
	pki := newTestPKI(t)
	logger, hook := logtest.NewNullLogger()
	a, b := freeLocal(t), freeLocal(t)
	c, err := New(Config{
		Server:   "127.0.0.1:1", // never reached: nothing here dials
		TLS:      func() *tls.Config { return trust.ClientConfig(pki.client, "srv.test", nil) },
		Forwards: []Forward{{Listen: a, Route: "db"}},
		Log:      logrus.NewEntry(logger),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	waitFor(t, 5*time.Second, func() bool { return accepts(a) })

	if err := c.SetForwards(ctx, []Forward{{Listen: b, Route: "db"}}); err != nil {
		t.Fatalf("SetForwards(b): %v", err)
	}
	if !accepts(b) || accepts(a) {
		t.Fatalf("after SetForwards(b): a accepts %v, b accepts %v; want only b", accepts(a), accepts(b))
	}

	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	err = c.SetForwards(ctx, []Forward{{Listen: taken.Addr().String(), Route: "db"}})
	var le *ListenError
	if !errors.As(err, &le) {
		t.Fatalf("SetForwards(taken port) = %v, want *ListenError", err)
	}
	if !accepts(b) {
		t.Fatal("a refused SetForwards closed the running forward")
	}

	// The same address with another route: the listener is replaced.
	if err := c.SetForwards(ctx, []Forward{{Listen: b, Route: "cache"}}); err != nil {
		t.Fatalf("SetForwards(b=cache): %v", err)
	}
	if !accepts(b) {
		t.Fatal("forward b is gone after its route changed")
	}
	var stopped, started int
	for _, e := range hook.AllEntries() {
		switch e.Data["event"] {
		case "listener_stopped":
			stopped++
		case "listener_started":
			started++
		}
	}
	if stopped != 2 || started != 3 {
		t.Errorf("logged %d listener_stopped and %d listener_started, want 2 and 3", stopped, started)
	}
	if err := c.SetForwards(ctx, nil); err == nil {
		t.Error("SetForwards(nil) succeeded")
	}
}

// Reload swaps the forwards, then the material; a forward that cannot be
// bound fails it before the material changes.
func TestReload(t *testing.T) {
	pki := newTestPKI(t)
	logger, _ := logtest.NewNullLogger()
	a, b := freeLocal(t), freeLocal(t)
	store := trust.NewStore(pki.client.Material())
	c, err := New(Config{
		Server: "127.0.0.1:1", Raw: true, // never dialled
		Trust: store, ServerName: "srv.test",
		Forwards: []Forward{{Listen: a, Route: "db"}},
		Log:      logrus.NewEntry(logger),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 5*time.Second, func() bool { return accepts(a) })

	next := pki.server.Material() // any other material will do
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	if err := c.Reload(ctx, State{Material: next, Forwards: []Forward{{Listen: taken.Addr().String(), Route: "db"}}}); err == nil {
		t.Fatal("Reload onto a taken port succeeded")
	}
	if store.Material() != pki.client.Material() || !accepts(a) {
		t.Fatal("a failed Reload changed the material or the forwards")
	}
	if err := c.Reload(ctx, State{Material: next, Forwards: []Forward{{Listen: b, Route: "db"}}}); err != nil {
		t.Fatal(err)
	}
	if store.Material() != next || !accepts(b) || accepts(a) {
		t.Errorf("after Reload: material swapped %v, b accepts %v, a accepts %v", store.Material() == next, accepts(b), accepts(a))
	}
	// The TLS config New built reads the store: the next dial presents the
	// new certificate.
	if got := c.cfg.TLS().Certificates[0].Leaf; got != next.Certificate.Leaf {
		t.Errorf("the TLS config presents %v, want the reloaded certificate", got.Subject)
	}
	if p := c.cfg.TLS().NextProtos; len(p) != 0 {
		t.Errorf("a raw client offers ALPN %q", p)
	}
}
