package e2e

import (
	"crypto/sha256"
	"io"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestClientReconnectsAfterServerRestart kills the server with SIGKILL,
// starts a new one on the same address, and checks that the client
// reconnects by itself and carries a new local connection.
func TestClientReconnectsAfterServerRestart(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	backend := echoBackend(t)
	args := serverArgs(pk, "127.0.0.1:0", "echo="+backend)
	srv1 := startProc(t, args...)
	addr := srv1.addr(t)
	cli := startProc(t, clientArgs(pk, addr, "echo")...)
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	local := cli.forwardAddr(t, "echo")
	echoCheck(t, local, 70, 64<<10)

	srv1.signal(t, syscall.SIGKILL)
	<-srv1.done
	cli.waitEvent(t, waitTimeout, "session_closed after SIGKILL", isEvent("session_closed"))

	srv2 := startProc(t, withFlag(args, "--listen", addr)...)
	if got := srv2.addr(t); got != addr {
		t.Fatalf("restarted server listens on %s, want %s", got, addr)
	}
	cli.waitEventN(t, 45*time.Second, 2, "a second session_opened", isEvent("session_opened"))
	srv2.waitEvent(t, waitTimeout, "session_opened on the new server", isEvent("session_opened"))
	echoCheck(t, local, 71, 64<<10)
}

// TestSIGTERMDrainsTransfer sends SIGTERM to the server while a stream is
// moving data: the transfer completes intact, then the server exits 0.
func TestSIGTERMDrainsTransfer(t *testing.T) {
	t.Parallel()
	const (
		down = 32 << 20 // backend -> client
		up   = 8 << 20  // client -> backend, sent after SIGTERM
	)
	backend, res := sourceSinkBackend(t, 80, down)
	pk := pkiDir(t)
	srv, cli := tunnelPair(t, pk, map[string]string{"bulk": backend})

	c := dialLocal(t, cli.forwardAddr(t, "bulk"))
	c.SetDeadline(time.Now().Add(90 * time.Second))
	h := sha256.New()
	if _, err := io.CopyN(h, c, 1<<20); err != nil {
		t.Fatalf("reading the first MiB: %v", err)
	}

	// The transfer is under way; the client reads nothing more until the
	// server has begun to stop.
	srv.signal(t, syscall.SIGTERM)
	srv.waitEvent(t, waitTimeout, "server_stopping", isEvent("server_stopping"))

	var local hashResult
	var wg sync.WaitGroup
	wg.Go(func() {
		local.sent, local.nSent, local.werr = sendHashed(c, 81, up)
		c.CloseWrite()
	})
	n, rerr := io.Copy(h, c)
	wg.Wait()
	local.got, local.nGot, local.rerr = [32]byte(h.Sum(nil)), n+1<<20, rerr
	if local.werr != nil || local.rerr != nil {
		t.Fatalf("during shutdown: write error %v, read error %v", local.werr, local.rerr)
	}

	var remote hashResult
	select {
	case remote = <-res:
	case <-time.After(waitTimeout):
		t.Fatal("backend did not finish")
	}
	if local.nGot != down || local.got != remote.sent {
		t.Errorf("backend->client: client got %d bytes sha256 %x, backend sent %d sha256 %x",
			local.nGot, local.got[:8], remote.nSent, remote.sent[:8])
	}
	if remote.rerr != nil || remote.nGot != up || remote.got != local.sent {
		t.Errorf("client->backend: backend got %d bytes sha256 %x (err %v), client sent %d sha256 %x",
			remote.nGot, remote.got[:8], remote.rerr, local.nSent, local.sent[:8])
	}
	if code := srv.wait(t, waitTimeout); code != 0 {
		t.Errorf("server exit status after SIGTERM = %d, want 0", code)
	}
}
