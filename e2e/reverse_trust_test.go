package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// A publisher the server stops trusting, by a CRL or by a reload of the
// expose's publishers rules, has its session closed at once: its
// publication is gone and the inbound connections it carried are reset,
// while another publisher's go on.

// idBackend answers each connection with the byte id, then echoes.
func idBackend(t *testing.T, id byte) string {
	return startBackend(t, func(c *net.TCPConn) {
		c.Write([]byte{id})
		io.Copy(c, c)
		c.CloseWrite()
	})
}

// heldByPublisher opens n inbound connections to addr and sorts them by
// the id byte of the publisher's backend that answered.
func heldByPublisher(t *testing.T, addr string, n int) map[byte][]*net.TCPConn {
	t.Helper()
	out := map[byte][]*net.TCPConn{}
	for range n {
		c := dialExpose(t, addr)
		c.SetDeadline(time.Now().Add(waitTimeout))
		var id [1]byte
		if _, err := io.ReadFull(c, id[:]); err != nil {
			t.Fatal(err)
		}
		out[id[0]] = append(out[id[0]], c)
	}
	return out
}

// checkCutOff checks that the connections of the publisher cut off are
// reset within d of start and that the others still echo, and returns how
// long the last reset took.
func checkCutOff(t *testing.T, cut, kept []*net.TCPConn, start time.Time, d time.Duration) time.Duration {
	t.Helper()
	for i, c := range cut {
		c.SetReadDeadline(time.Now().Add(d))
		if err := readUntilErr(c, d); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("inbound connection %d of the publisher cut off ended with %v, want a reset within %v", i, err, d)
		}
	}
	elapsed := time.Since(start)
	for i, c := range kept {
		msg := []byte(fmt.Sprintf("kept %d", i))
		c.SetDeadline(time.Now().Add(waitTimeout))
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("inbound connection %d of the other publisher: %v", i, err)
		}
		back := make([]byte, len(msg))
		if _, err := io.ReadFull(c, back); err != nil || !bytes.Equal(back, msg) {
			t.Fatalf("inbound connection %d of the other publisher: %q, %v", i, back, err)
		}
	}
	return elapsed
}

// onlyThrough checks that n new inbound connections to addr all go to the
// publisher whose backend answers id.
func onlyThrough(t *testing.T, addr string, id byte, n int) {
	t.Helper()
	for i, cs := range heldByPublisher(t, addr, n) {
		for _, c := range cs {
			c.Close()
		}
		if i != id {
			t.Errorf("%d new connections went to the publisher answering %q, want all to %q", len(cs), i, id)
		}
	}
}

// TestReversePublisherRevoked: two publishers of one name; a CRL file that
// revokes one of them, replaced while its inbound connections are open,
// closes its session: those connections are reset within seconds, its
// publication is removed, new connections go to the other publisher, whose
// connections never notice, and its redial is refused.
func TestReversePublisherRevoked(t *testing.T) {
	t.Parallel()
	p := newChainPKI(t)
	app1, app2 := p.leaf(t, "app1"), p.leaf(t, "app2")
	crlFile := p.file(t, "inter.crl", crl(t, p.inter, 0))
	srv := p.server(t, echoBackend(t), "--crl", crlFile, "--expose", exposeSpec("svc", []string{"cn:app1", "cn:app2"}))
	addr := srv.addr(t)
	publish := func(l leafFiles, id byte) *proc {
		cli := startProc(t, "client", "--server", addr, "--server-name", "localhost", "--cert", l.cert, "--key", l.key,
			"--ca", p.rootFile, "--publish", "svc="+idBackend(t, id), "--log-format", "json", "--log-level", "debug")
		cli.waitEvent(t, waitTimeout, "publish_added", isEvent("publish_added", "expose", "svc"))
		return cli
	}
	c1 := publish(app1, 'A')
	publish(app2, 'B')
	srv.waitEventN(t, waitTimeout, 2, "two publications", isEvent("publish_added", "expose", "svc"))
	xaddr := srv.exposeAddr(t, "svc")
	held := heldByPublisher(t, xaddr, 10)
	if len(held['A']) != 5 || len(held['B']) != 5 {
		t.Fatalf("10 connections: %d to app1, %d to app2; want 5 each", len(held['A']), len(held['B']))
	}

	start := time.Now()
	writeFileAtomic(t, crlFile, crl(t, p.inter, 0, app1.serial)) // the reload watcher sees it
	elapsed := checkCutOff(t, held['A'], held['B'], start, 5*time.Second)
	t.Logf("the revoked publisher's 5 inbound connections were reset %v after the CRL file changed; app2's 5 went on", elapsed.Round(time.Millisecond))
	srv.waitEvent(t, waitTimeout, "session_revoked app1", isEvent("session_revoked", "identity_cn", "app1", "reason", "revoked"))
	ev := srv.waitEvent(t, waitTimeout, "publish_removed app1", isEvent("publish_removed", "identity_cn", "app1"))
	if gone := time.Since(start); gone > 5*time.Second {
		t.Errorf("app1's publication removed %v after the CRL changed", gone)
	}
	t.Logf("publish_removed of app1: reason %v", ev["reason"])
	onlyThrough(t, xaddr, 'B', 6)
	handshakeRefused(t, srv, "revoked") // app1's redial
	if n := len(c1.matching(isEvent("publish_added"))); n != 1 {
		t.Errorf("the revoked client published %d times, want once", n)
	}
}

// TestReversePublishersReloaded: a config-file reload that takes an
// identity out of an expose's publishers closes that publisher's session
// at once (its inbound connections reset); it redials, and its publication
// is refused; the other publisher is untouched.
func TestReversePublishersReloaded(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	cert2, key2 := pk.issue(t, "--client", "app2")
	dir := t.TempDir()
	conf := func(publishers string) string {
		return fmt.Sprintf(`listen: 127.0.0.1:0
allow: [127.0.0.1/32]
tls: {cert: %s, key: %s, ca: %s}
log: {format: json, level: debug}
exposes:
  - listen: 127.0.0.1:0
    name: svc
    allow: [127.0.0.1/32]
    publishers: [%s]
`, pk.serverCert, pk.serverKey, pk.ca, publishers)
	}
	file := filepath.Join(dir, "server.yaml")
	writeFileAtomic(t, file, []byte(conf("cn:app1, cn:app2")))
	srv := startProc(t, "server", "--config", file)
	a := startProc(t, publisherArgs(pk, srv.addr(t), pk.clientCert, pk.clientKey, "svc="+idBackend(t, 'A'))...)
	b := startProc(t, publisherArgs(pk, srv.addr(t), cert2, key2, "svc="+idBackend(t, 'B'))...)
	a.waitEvent(t, waitTimeout, "app1 publish_added", isEvent("publish_added", "expose", "svc"))
	b.waitEvent(t, waitTimeout, "app2 publish_added", isEvent("publish_added", "expose", "svc"))
	srv.waitEventN(t, waitTimeout, 2, "two publications", isEvent("publish_added", "expose", "svc"))
	xaddr := srv.exposeAddr(t, "svc")
	held := heldByPublisher(t, xaddr, 6)

	start := time.Now()
	writeFileAtomic(t, file, []byte(conf("cn:app2"))) // the watcher reloads it
	elapsed := checkCutOff(t, held['A'], held['B'], start, 5*time.Second)
	t.Logf("after the reload took app1 out of the publishers, its %d inbound connections were reset %v after the file changed", len(held['A']), elapsed.Round(time.Millisecond))
	ev := srv.waitEvent(t, waitTimeout, "session_revoked app1", isEvent("session_revoked", "identity_cn", "app1"))
	if ev["reason"] != "identity_not_allowed" || ev["expose"] != "svc" || ev["rule_set"] != "exposes.svc.publishers" {
		t.Errorf("session_revoked: %v; want reason identity_not_allowed, expose svc, rule_set exposes.svc.publishers", ev)
	}
	if ev := srv.waitEvent(t, waitTimeout, "reload_applied", isEvent("reload_applied")); ev["restart_needed"] != nil {
		t.Errorf("a change of publishers wants a restart: %v", ev["restart_needed"])
	}
	// app1 comes back (the main listener still takes it) and is refused.
	a.waitEvent(t, waitTimeout, "app1's publish_refused", isEvent("publish_refused", "expose", "svc", "status", "forbidden"))
	onlyThrough(t, xaddr, 'B', 4)
}

// TestReversePublicationMovesWithSession: with --max-session-lifetime the
// server sends GoAway and withdraws the session's publication; the client
// dials a new session and publishes there, and an inbound connection
// carried across the change goes on to its end, while new ones go through
// the new session.
func TestReversePublicationMovesWithSession(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	srv := exposeServer(t, pk, nil, []string{exposeSpec("svc", []string{"cn:app1"})}, "--max-session-lifetime", "2s")
	startPublisher(t, pk, srv, "svc="+echoBackend(t))
	addr := srv.exposeAddr(t, "svc")
	long := holdEchoed(t, "127.0.0.1", addr, 1)[0]

	srv.waitEvent(t, waitTimeout, "publish_removed at the session's end of life", isEvent("publish_removed", "reason", "session_expiring"))
	removed := time.Now()
	srv.waitEventN(t, waitTimeout, 2, "the publication on the new session", isEvent("publish_added", "expose", "svc"))
	t.Logf("the session expired; its publication was live on a new session %v after the server withdrew it", time.Since(removed).Round(time.Millisecond))
	holdEchoed(t, "127.0.0.1", addr, 3) // new connections, through the new session
	msg := []byte("still carried")
	long.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := long.Write(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(long, make([]byte, len(msg))); err != nil {
		t.Fatalf("the connection carried across the GoAway: %v", err)
	}
}
