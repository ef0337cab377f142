package server

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/alive"
)

// Sessions lists a live session with its id, identity, address and live
// stream and byte counts; Routes counts the open stream on its route; the
// session's lines all carry its session_id; CloseSession ends it with
// reason admin_close, and an unknown id is ErrNoSession.
func TestSessionsRoutesAndClose(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, nil)
	s := dialSession(t, pki, r.addr)
	st, err := openRoute(t, s, header(t, "echo"))
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("hello, status")
	if _, err := st.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(st, got); err != nil {
		t.Fatal(err)
	}
	var info SessionInfo
	waitFor(t, 5*time.Second, func() bool {
		ss := r.srv.Sessions()
		if len(ss) != 1 {
			return false
		}
		info = ss[0]
		return info.BytesIn == int64(len(msg)) && info.BytesOut == int64(len(msg))
	})
	if len(info.ID) != 8 || info.Identity.CommonName != "app1" || info.Streams != 1 || info.Addr == "" || time.Since(info.Since) > time.Minute {
		t.Errorf("Sessions()[0] = %+v", info)
	}
	routes := r.srv.Routes()
	if len(routes) != 2 || routes[1].Name != "echo" || routes[1].Open != 1 || routes[0].Name != "down" || routes[0].Open != 0 {
		t.Errorf("Routes() = %+v, want down (0 open) and echo (1 open)", routes)
	}

	if err := r.srv.CloseSession("nope"); !errors.Is(err, ErrNoSession) {
		t.Errorf("CloseSession(unknown) = %v, want ErrNoSession", err)
	}
	if err := r.srv.CloseSession(info.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool {
		return hasEntry(r.log, "event", "session_closed", "reason", "admin_close", "session_id", info.ID)
	})
	for _, ev := range []string{"session_opened", "session_closing", "stream_closed"} {
		if !hasEntry(r.log, "event", ev, "session_id", info.ID) {
			t.Errorf("no %s line with session_id %s", ev, info.ID)
		}
	}
	if n := len(r.srv.Sessions()); n != 0 {
		t.Errorf("%d sessions after CloseSession, want 0", n)
	}
}

// The accept loop is alive while Serve runs, even with no one connecting
// (it wakes to beat), and not once Serve has returned.
func TestAliveFollowsTheAcceptLoop(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, nil)
	waitFor(t, 5*time.Second, func() bool { return r.srv.Alive() == nil })
	time.Sleep(aliveWithin + aliveTick) // idle longer than one promise: the wake-ups keep it
	if err := r.srv.Alive(); err != nil {
		t.Fatalf("idle accept loop: Alive() = %v", err)
	}
	r.stop()
	if err := r.srv.Alive(); !errors.Is(err, alive.ErrStopped) {
		t.Errorf("after Serve returned: Alive() = %v, want ErrStopped", err)
	}
}
