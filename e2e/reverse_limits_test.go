package e2e

import (
	"io"
	"net"
	"testing"
	"time"
)

// The limits of reverse tunnels, each against the load it exists for: a
// publisher's stream cap on the server, the expose's per-address cap, the
// client's own cap on the server's streams, the stream rate and the
// session's memory budget applied to the streams the server opens.

// holdEchoed opens n inbound connections to addr, each proven carried by
// one echoed byte, and returns them open.
func holdEchoed(t *testing.T, src, addr string, n int) []*net.TCPConn {
	t.Helper()
	var out []*net.TCPConn
	for i := range n {
		c, err := dialFrom(src, addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(waitTimeout))
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatalf("connection %d within the limit: %v", i, err)
		}
		out = append(out, c)
	}
	return out
}

// TestReversePublisherStreamCap: with max-streams-per-publisher=4, a
// fifth inbound connection while four are carried is reset at once
// (publisher_limit); once one ends, a new one is carried again.
func TestReversePublisherStreamCap(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	srv := exposeServer(t, pk, nil, []string{exposeSpec("svc", []string{"cn:app1"}, "max-streams-per-publisher=4")})
	startPublisher(t, pk, srv, "svc="+echoBackend(t))
	addr := srv.exposeAddr(t, "svc")
	held := holdEchoed(t, "127.0.0.1", addr, 4)
	var slowest time.Duration
	for range 4 {
		slowest = max(slowest, expectReset(t, "127.0.0.1", addr, []byte("over")))
	}
	srv.waitEvent(t, waitTimeout, "conn_rejected publisher_limit", isEvent("conn_rejected", "component", "expose", "reason", "publisher_limit"))
	t.Logf("4 connections carried; 4 more each reset within %v (publisher_limit)", slowest.Round(time.Microsecond))
	held[0].Close()
	srv.waitEventN(t, waitTimeout, 1, "the closed one's stream_closed", isEvent("stream_closed", "direction", "reverse"))
	holdEchoed(t, "127.0.0.1", addr, 1)
}

// TestReverseConnsPerAddr: with max-conns-per-addr=3, a fourth inbound
// connection from one address is reset before any byte (conn_limit) while
// another address still gets through.
func TestReverseConnsPerAddr(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	spec := "127.0.0.1:0=svc,allow=127.0.0.1/32,allow=127.0.0.2/32,publisher=cn:app1,max-conns-per-addr=3"
	srv := exposeServer(t, pk, nil, []string{spec})
	startPublisher(t, pk, srv, "svc="+echoBackend(t))
	addr := srv.exposeAddr(t, "svc")
	holdEchoed(t, "127.0.0.1", addr, 3)
	expectReset(t, "127.0.0.1", addr, []byte("fourth"))
	srv.waitEvent(t, waitTimeout, "conn_rejected conn_limit", isEvent("conn_rejected", "component", "expose", "reason", "conn_limit"))
	holdEchoed(t, "127.0.0.2", addr, 3)
}

// TestReverseClientStreamCap: a client with --publish-max-streams 2
// refuses the server's third stream at once with the over-limit status;
// the server, with no other publisher, resets the inbound connection
// (publisher_failed) and logs the refusal.
func TestReverseClientStreamCap(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	srv := exposeServer(t, pk, nil, []string{exposeSpec("svc", []string{"cn:app1"})})
	cli := startProc(t, append(publisherArgs(pk, srv.addr(t), pk.clientCert, pk.clientKey, "svc="+echoBackend(t)), "--publish-max-streams", "2")...)
	cli.waitEvent(t, waitTimeout, "publish_added", isEvent("publish_added", "expose", "svc"))
	addr := srv.exposeAddr(t, "svc")
	holdEchoed(t, "127.0.0.1", addr, 2)
	d := expectReset(t, "127.0.0.1", addr, []byte("third"))
	ev := srv.waitEvent(t, waitTimeout, "stream_refused over_limit", isEvent("stream_refused", "direction", "reverse", "status", "over_limit"))
	if ev["identity_cn"] != "app1" {
		t.Errorf("stream_refused names %v, want the publisher app1", ev["identity_cn"])
	}
	srv.waitEvent(t, waitTimeout, "conn_rejected publisher_failed", isEvent("conn_rejected", "component", "expose", "reason", "publisher_failed"))
	t.Logf("the third inbound connection, past the client's --publish-max-streams 2, was reset %v after its dial", d.Round(time.Microsecond))
}

// TestReverseStreamRate: the server's --max-stream-rate bounds the streams
// it opens toward one publisher too: at 5 a second (burst 5, the
// per-publisher cap), connections as fast as they come get through at
// about that rate and the rest are reset (publisher_limit).
func TestReverseStreamRate(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	srv := exposeServer(t, pk, nil, []string{exposeSpec("svc", []string{"cn:app1"}, "max-streams-per-publisher=5")}, "--max-stream-rate", "5")
	startPublisher(t, pk, srv, "svc="+echoBackend(t))
	addr := srv.exposeAddr(t, "svc")
	start := time.Now()
	carried, reset := 0, 0
	for range 40 {
		c, err := dialFrom("127.0.0.1", addr)
		if err != nil {
			reset++
			continue
		}
		c.SetDeadline(time.Now().Add(waitTimeout))
		c.Write([]byte("x"))
		if _, err := io.ReadFull(c, make([]byte, 1)); err == nil {
			carried++
		} else {
			reset++
		}
		c.Close()
	}
	elapsed := time.Since(start)
	limit := 5 + int(5*elapsed.Seconds()) + 1
	t.Logf("40 connections in %v: %d carried, %d reset (at most %d allowed by 5/s with a burst of 5)", elapsed.Round(time.Millisecond), carried, reset, limit)
	if carried > limit || carried < 5 || reset == 0 {
		t.Errorf("%d carried, %d reset in %v; want 5..%d carried", carried, reset, elapsed, limit)
	}
	srv.waitEvent(t, waitTimeout, "conn_rejected publisher_limit", isEvent("conn_rejected", "component", "expose", "reason", "publisher_limit"))
}

// TestReverseSessionMemory: the session memory budget bounds what the
// server holds of the streams it opens: a published service that floods
// eight inbound connections that never read, with --session-memory 1MiB,
// has streams reset for the budget (stream_reset memory_budget) instead of
// the server holding 8 x 256 KiB of their data.
func TestReverseSessionMemory(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	flood := startBackend(t, func(c *net.TCPConn) {
		c.SetWriteBuffer(16 << 10) // bounded kernel buffers: the test pushes little
		c.SetDeadline(time.Now().Add(waitTimeout))
		buf := make([]byte, 64<<10)
		for range 64 { // 4 MiB at most
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	srv := exposeServer(t, pk, nil, []string{exposeSpec("svc", []string{"cn:app1"})}, "--session-memory", "1MiB")
	startPublisher(t, pk, srv, "svc="+flood)
	addr := srv.exposeAddr(t, "svc")
	var conns []*net.TCPConn
	for range 8 {
		d := net.Dialer{Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		tc := c.(*net.TCPConn)
		tc.SetReadBuffer(4 << 10) // never read: keep what the kernel takes small
		t.Cleanup(func() { tc.Close() })
		conns = append(conns, tc)
	}
	ev := srv.waitEvent(t, waitTimeout, "stream_reset memory_budget", isEvent("stream_reset", "reason", "memory_budget"))
	t.Logf("8 flooded reverse streams whose inbound side never reads, --session-memory 1MiB: %v", ev["msg"])
}
