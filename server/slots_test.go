package server

import (
	"crypto/tls"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestSlotSet: a full set evicts its oldest slot waiting on its peer, never
// one still working (before its first write, or reading with the peer's
// bytes in hand), and gives the place to the newcomer; with none waiting
// it refuses the newcomer; an evicted slot's release reports it and gives
// nothing back twice.
func TestSlotSet(t *testing.T) {
	s := &slotSet{max: 3}
	ip := netip.MustParseAddr("127.0.0.1")
	take := func() (*handshakeSlot, *pipeEnd, *victim) {
		c := newPipeEnd(t)
		sl, v := s.take(c, ip)
		return sl, c, v
	}
	check := func(what string, held, waiting int) {
		t.Helper()
		if h, w := s.counts(); h != held || w != waiting {
			t.Errorf("%s: counts = %d held, %d waiting; want %d, %d", what, h, w, held, waiting)
		}
	}
	var slots [3]*handshakeSlot
	var conns [3]*pipeEnd
	for i := range slots {
		var v *victim
		if slots[i], conns[i], v = take(); slots[i] == nil || v != nil {
			t.Fatalf("take %d with room = %v, %v", i, slots[i], v)
		}
	}
	slots[0].readingPeer(true) // reading before it wrote: still working
	slots[1].wroteToPeer()     // wrote, not reading: working
	slots[2].wroteToPeer()
	slots[2].readingPeer(true) // the only one waiting
	check("one waiting", 3, 1)

	sl3, c3, v := take()
	if sl3 == nil || v == nil || v.conn != conns[2] {
		t.Fatalf("full set: slot %t, victim %t; want a slot, and victim 2 (the only one waiting)", sl3 != nil, v != nil)
	}
	check("after the eviction", 3, 0)
	if s.release(slots[2]) || s.release(slots[2]) {
		t.Error("release of an evicted slot reported true")
	}
	slots[2].readingPeer(false) // its owner's read returns after the eviction
	slots[2].readingPeer(true)
	check("after the evicted slot's release", 3, 0)

	if sl, v := s.take(newPipeEnd(t), ip); sl != nil || v != nil {
		t.Fatalf("full set with none waiting: take = %v, %v; want refused", sl, v)
	}

	// Several waiting: the oldest goes first, whatever order they began
	// waiting in.
	sl3.wroteToPeer()
	sl3.readingPeer(true)
	slots[1].readingPeer(true)
	slots[0].wroteToPeer()
	check("all waiting", 3, 3)
	for i, want := range []*pipeEnd{conns[0], conns[1], c3} {
		if sl, _, v := take(); sl == nil || v == nil || v.conn != want {
			t.Fatalf("newcomer %d: slot %t, victim %t, or not the oldest waiting one", i, sl != nil, v != nil)
		}
	}
	check("three newcomers", 3, 0)

	// A read that returned with the peer's bytes is working again; a
	// released slot gives its place back once.
	s2 := &slotSet{max: 1}
	a, _ := s2.take(newPipeEnd(t), ip)
	a.wroteToPeer()
	a.readingPeer(true)
	a.readingPeer(false)
	if sl, v := s2.take(newPipeEnd(t), ip); sl != nil || v != nil {
		t.Fatalf("slot whose read returned was evicted: %v, %v", sl, v)
	}
	if !s2.release(a) || !s2.release(a) {
		t.Error("release of a live slot reported false")
	}
	b, _ := s2.take(newPipeEnd(t), ip)
	if sl, _ := s2.take(newPipeEnd(t), ip); b == nil || sl != nil {
		t.Fatalf("after one release: %v, then %v; want one slot, then refused", b, sl)
	}
}

// helloConn marks its slot waiting only while it reads the peer after a
// write, with the prologue's bytes used up.
func TestHelloConnMarksWaiting(t *testing.T) {
	s := &slotSet{max: 1}
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	sl, _ := s.take(a, netip.MustParseAddr("127.0.0.1"))
	h := &helloConn{Conn: a, hello: []byte("hi"), slot: sl}
	waiting := func() int { _, w := s.counts(); return w }

	if n, _ := h.Read(make([]byte, 2)); n != 2 || waiting() != 0 {
		t.Fatalf("replay read %d bytes, %d waiting; want 2, 0", n, waiting())
	}
	go b.Write([]byte("x"))
	if n, _ := h.Read(make([]byte, 1)); n != 1 || waiting() != 0 {
		t.Fatalf("read before any write: %d bytes, %d waiting; want 1, 0", n, waiting())
	}
	go b.Read(make([]byte, 16))
	if _, err := h.Write([]byte("flight")); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.Read(make([]byte, 1))
	}()
	waitFor(t, 5*time.Second, func() bool { return waiting() == 1 })
	b.Write([]byte("y"))
	<-done
	if waiting() != 0 {
		t.Errorf("%d waiting after the peer's bytes came, want 0", waiting())
	}
}

// A handshake waiting on its peer makes room for a new one: with two
// slots, both held by ClientHellos that stalled after the server's flight,
// a real client evicts the older one and gets its session; the younger is
// kept. The evicted one is counted and logged once, as handshake_evicted,
// not as a failed handshake.
func TestHandshakeEvictsOldestWaiting(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, func(c *Config) { c.MaxHandshakes = 2 })
	ch := clientHello(t, pki.clientTLS)
	stalled := dialSilent(t, r.addr, 2)
	for i, c := range stalled {
		if _, err := c.Write(ch); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, func() bool { return r.srv.Stats().HandshakesWaiting == i+1 })
	}
	s := dialSession(t, pki, r.addr)
	if _, err := openRoute(t, s, header(t, "echo")); err != nil {
		t.Fatalf("stream beside two stalled handshakes: %v", err)
	}
	if !isReset(stalled[0], 5*time.Second) {
		t.Fatal("the oldest stalled handshake was not reset")
	}
	if isReset(stalled[1], 100*time.Millisecond) {
		t.Error("the younger stalled handshake was reset too")
	}
	waitFor(t, 5*time.Second, func() bool { return r.srv.Stats().HandshakesInFlight == 1 })
	st := r.srv.Stats()
	if st.HandshakesEvicted != 1 || st.Rejected[ReasonHandshakeEvicted] != 1 || st.LimitHits["handshakes"] != 1 ||
		st.HandshakeLimit != 0 || st.HandshakesFailed != 0 || st.HandshakesOK != 1 {
		t.Errorf("Stats = evicted %d, rejected %v, limit hits %v, refused %d, failed %d, ok %d; want one eviction, one session",
			st.HandshakesEvicted, st.Rejected, st.LimitHits, st.HandshakeLimit, st.HandshakesFailed, st.HandshakesOK)
	}
	if !hasEntry(r.log, "event", "conn_rejected", "reason", ReasonHandshakeEvicted, "addr", "127.0.0.1") {
		t.Error("no conn_rejected handshake_evicted line")
	}
	if hasEntry(r.log, "event", "handshake_failed") {
		t.Error("the evicted handshake was logged as failed too")
	}
}

// A handshake still working (here: crypto/tls asking for its config, before
// its first write) is never evicted: with the only slot working, a newcomer
// is refused (handshake_limit). Once that handshake has written its flight
// and waits on its stalled peer, the next newcomer takes its slot.
func TestHandshakeLimitWhenAllWorking(t *testing.T) {
	pki := newTestPKI(t)
	gate := make(chan struct{})
	r := startServer(t, pki, func(c *Config) {
		c.MaxHandshakes = 1
		c.TLS = pki.serverTLS.Clone()
		forClient := pki.serverTLS.GetConfigForClient
		c.TLS.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			<-gate
			return forClient(h)
		}
	})
	var opened bool
	t.Cleanup(func() { // before the server's: its shutdown waits for the gated handshake
		if !opened {
			close(gate)
		}
	})
	ch := clientHello(t, pki.clientTLS)
	working := dialSilent(t, r.addr, 1)[0]
	working.Write(ch)
	waitFor(t, 5*time.Second, func() bool { return r.srv.Stats().HandshakesInFlight == 1 })

	newcomer := dialSilent(t, r.addr, 1)[0]
	newcomer.Write(ch)
	if !isReset(newcomer, 5*time.Second) {
		t.Fatal("a newcomer at a set of working handshakes was not refused")
	}
	if isReset(working, 100*time.Millisecond) {
		t.Fatal("a working handshake was reset")
	}
	st := r.srv.Stats()
	if st.HandshakeLimit != 1 || st.Rejected[ReasonHandshakeLimit] != 1 || st.HandshakesEvicted != 0 {
		t.Errorf("Stats = refused %d, rejected %v, evicted %d; want one refusal", st.HandshakeLimit, st.Rejected, st.HandshakesEvicted)
	}

	close(gate)
	opened = true
	waitFor(t, 5*time.Second, func() bool { return r.srv.Stats().HandshakesWaiting == 1 })
	s := dialSession(t, pki, r.addr)
	if _, err := openRoute(t, s, header(t, "echo")); err != nil {
		t.Fatal(err)
	}
	if !isReset(working, 5*time.Second) {
		t.Fatal("the handshake waiting on its stalled peer kept its slot")
	}
	if n := r.srv.Stats().HandshakesEvicted; n != 1 {
		t.Errorf("HandshakesEvicted = %d, want 1", n)
	}
}
