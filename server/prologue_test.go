package server

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/tunnel-dev/tunnel/netfilter"
)

// clientHello returns the first flight of a real crypto/tls client with
// cfg: its ClientHello record(s).
func clientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	a, b := net.Pipe()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer a.Close()
	defer b.Close()
	wg.Go(func() { tls.Client(a, cfg).Handshake() })
	hdr := make([]byte, recordHeaderLen)
	if _, err := io.ReadFull(b, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(b, body); err != nil {
		t.Fatal(err)
	}
	return append(hdr, body...)
}

// record frames body as one TLS record of type typ.
func record(typ byte, body []byte) []byte {
	return append([]byte{typ, 3, 1, byte(len(body) >> 8), byte(len(body))}, body...)
}

// fragment re-frames the handshake payload of the one-record ClientHello ch
// into records of at most size bytes.
func fragment(ch []byte, size int) []byte {
	payload := ch[recordHeaderLen:]
	var out []byte
	for len(payload) > 0 {
		n := min(size, len(payload))
		out = append(out, record(recordTypeHandshake, payload[:n])...)
		payload = payload[n:]
	}
	return out
}

// errMore is what the reader behind the prologue's bytes returns: anything
// that reads it asked the peer for more than the prologue waited for.
var errMore = errors.New("read past the prologue")

// tailConn serves the prologue's bytes, then errMore, and records what
// crypto/tls wrote before it read past them.
type tailConn struct {
	net.Conn // nil; only the methods below are used
	r        *bytes.Reader
	first    byte // record type of the first write before any read past the bytes; 0: none
	asked    bool // a read past the bytes happened
}

func (c *tailConn) Read(p []byte) (int, error) {
	if c.r.Len() == 0 {
		c.asked = true
		return 0, errMore
	}
	return c.r.Read(p)
}

func (c *tailConn) Write(p []byte) (int, error) {
	if !c.asked && c.first == 0 && len(p) > 0 {
		c.first = p[0]
	}
	return len(p), nil
}

func (c *tailConn) Close() error                     { return nil }
func (c *tailConn) SetDeadline(time.Time) error      { return nil }
func (c *tailConn) SetReadDeadline(time.Time) error  { return nil }
func (c *tailConn) SetWriteDeadline(time.Time) error { return nil }
func (c *tailConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *tailConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }

// serveTLS runs a server handshake over b and reports whether crypto/tls
// sent its first flight (a handshake record, not an alert); it fails t if
// crypto/tls asked for more than b before sending anything.
func serveTLS(t *testing.T, cfg *tls.Config, b []byte) (flight bool, err error) {
	t.Helper()
	c := &tailConn{r: bytes.NewReader(b)}
	err = tls.Server(c, cfg).Handshake()
	if c.asked && c.first == 0 {
		t.Errorf("crypto/tls read past the prologue's %d bytes before sending anything (%v)", len(b), err)
	}
	return c.first == recordTypeHandshake, err
}

// TestReadClientHello: the prologue reads exactly a whole ClientHello, and
// for anything else stops where crypto/tls, given the bytes read, fails or
// sends its first flight without reading more from the peer.
func TestReadClientHello(t *testing.T) {
	pki := newTestPKI(t)
	ch := clientHello(t, pki.clientTLS)
	warning := record(recordTypeAlert, []byte{alertLevelWarning, 112}) // unrecognized_name
	var warnings, tooLong []byte
	for range maxIgnoredRecords + 1 {
		warnings = append(warnings, warning...)
	}
	// A 64 KiB ClientHello in 1-byte records: the headers take it past
	// maxPrologue, which stops once the next record would not fit.
	for _, b := range []byte{1, 0, 0xff, 0xff} {
		tooLong = append(tooLong, record(recordTypeHandshake, []byte{b})...)
	}
	for len(tooLong) < 2*maxPrologue {
		tooLong = append(tooLong, record(recordTypeHandshake, []byte{0})...)
	}
	tooLongRead := 0
	for tooLongRead+6 <= maxPrologue {
		tooLongRead += 6
	}
	tooLongRead += recordHeaderLen
	tests := []struct {
		name   string
		in     []byte // what the peer sends (then it would send more, or wait)
		want   int    // bytes readClientHello returns
		err    error  // its error, if any
		flight bool   // crypto/tls then sends its first flight (true) or fails (false)
	}{
		{"one record", ch, len(ch), nil, true},
		{"three records", fragment(ch, 600), len(fragment(ch, 600)), nil, true},
		{"one-byte records", fragment(ch, 1), len(fragment(ch, 1)), nil, true},
		{"warnings first", append(bytes.Repeat(warning, 3), ch...), 3*len(warning) + len(ch), nil, true},
		{"too many warnings", warnings, len(warnings), nil, false},
		{"HTTP", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), recordHeaderLen, nil, false},
		{"SSLv2", []byte{0x80, 0x2e, 0x01, 0x03, 0x01, 0, 0, 0}, recordHeaderLen, nil, false},
		{"fatal alert", record(recordTypeAlert, []byte{2, 40}), 7, nil, false},
		{"close_notify", record(recordTypeAlert, []byte{alertLevelWarning, alertCloseNotify}), 7, nil, false},
		{"empty handshake record", record(recordTypeHandshake, nil), recordHeaderLen, nil, false},
		{"record too long", []byte{22, 3, 1, 0x48, 0x01}, recordHeaderLen, nil, false},
		{"message too long", record(recordTypeHandshake, []byte{1, 1, 0, 1}), 9, nil, false},
		{"not a ClientHello", record(recordTypeHandshake, []byte{2, 0, 0, 1, 0}), 10, nil, false},
		{"cut short", ch[:100], 100, io.ErrUnexpectedEOF, false},
		{"cut in a header", ch[:3], 3, io.ErrUnexpectedEOF, false},
		{"nothing", nil, 0, io.EOF, false},
		{"too large", tooLong, tooLongRead, errHelloTooLarge, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			started := false
			grew := func(int) { started = true }
			in := tt.in
			if tt.err == nil { // the peer would go on sending: the prologue must stop by itself
				in = append(append([]byte(nil), in...), "more the peer would send"...)
			}
			got, err := readClientHello(bytes.NewReader(in), grew)
			if !errors.Is(err, tt.err) {
				t.Fatalf("readClientHello error = %v, want %v", err, tt.err)
			}
			if len(got) != tt.want {
				t.Fatalf("readClientHello read %d bytes, want %d", len(got), tt.want)
			}
			if !bytes.Equal(got, in[:len(got)]) {
				t.Fatal("readClientHello did not return the bytes it read, in order")
			}
			if started != (len(tt.in) > 0) {
				t.Errorf("started called %v, want %v", started, len(tt.in) > 0)
			}
			if tt.err != nil {
				return
			}
			if flight, err := serveTLS(t, pki.serverTLS, got); flight != tt.flight {
				t.Errorf("crypto/tls sent its first flight: %v, want %v (handshake error %v)", flight, tt.flight, err)
			}
		})
	}
}

// FuzzReadClientHello: whatever the peer sends, the prologue returns a
// prefix of it, and crypto/tls given that prefix never needs more before
// it fails or sends its first flight.
func FuzzReadClientHello(f *testing.F) {
	pki := newTestPKI(f)
	ch := clientHello(f, pki.clientTLS)
	f.Add(ch)
	f.Add(fragment(ch, 7))
	f.Add([]byte("GET / HTTP/1.0\r\n\r\n"))
	f.Add(record(recordTypeAlert, []byte{1, 0}))
	f.Add(record(recordTypeHandshake, []byte{1, 0, 0, 0}))
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := readClientHello(bytes.NewReader(in), func(int) {})
		if !bytes.Equal(got, in[:len(got)]) {
			t.Fatal("not a prefix of the input")
		}
		if len(got) > maxPrologue {
			t.Fatalf("buffered %d bytes, bound %d", len(got), maxPrologue)
		}
		if err != nil {
			return // the peer left, or too large: nothing reaches crypto/tls
		}
		serveTLS(t, pki.serverTLS, got)
	})
}

// A ClientHello trickled in costs what was sent, not what its record
// header announced.
func TestReadClientHelloGrowsWithData(t *testing.T) {
	in := []byte{22, 3, 1, 0x40, 0x00, 1, 0, 0x3f, 0xfc} // announces 16 KiB
	got, err := readClientHello(io.LimitReader(bytes.NewReader(append(in, make([]byte, 100)...)), 109), func(int) {})
	if !errors.Is(err, io.ErrUnexpectedEOF) || len(got) != 109 {
		t.Fatalf("got %d bytes, %v", len(got), err)
	}
	if cap(got) > 1024 {
		t.Errorf("buffer of %d bytes for 109 received", cap(got))
	}
}

func TestHelloConnReplaysThenReads(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	h := &helloConn{Conn: a, hello: []byte("hello ")}
	go b.Write([]byte("world"))
	got := make([]byte, 0, 16)
	for len(got) < len("hello world") {
		buf := make([]byte, 4)
		n, err := h.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != "hello world" {
		t.Fatalf("read %q", got)
	}
}

// TestPendingSet: a full set evicts its oldest silent connection first,
// then the oldest with a ClientHello begun; an evicted connection's owner
// learns it; shutdown closes what is left and refuses new ones.
func TestPendingSet(t *testing.T) {
	p := &pendingSet{max: 3}
	ip := netip.MustParseAddr("127.0.0.1")
	conns := make([]*pipeEnd, 6)
	pcs := make([]*pendingConn, 6)
	add := func(i int) *victim {
		conns[i] = newPipeEnd(t)
		var v *victim
		pcs[i], v = p.add(conns[i], ip)
		return v
	}
	for i := range 3 {
		if v := add(i); v != nil {
			t.Fatalf("add %d to a set with room evicted %v", i, v)
		}
	}
	p.started(pcs[0]) // 0 has begun its ClientHello; 1 and 2 are silent
	if v := add(3); v == nil || v.conn != conns[1] {
		t.Fatalf("full set evicted %v, want the oldest silent (1)", v)
	}
	if p.leave(pcs[1]) {
		t.Error("leave of an evicted connection reported true")
	}
	p.started(pcs[2])
	p.started(pcs[3])
	if v := add(4); v == nil || v.conn != conns[0] {
		t.Fatalf("full set with nothing silent evicted %v, want the oldest ClientHello (0)", v)
	}
	if s, h, _ := p.counts(); s != 1 || h != 2 {
		t.Errorf("counts = %d silent, %d client_hello; want 1, 2", s, h)
	}
	if !p.leave(pcs[2]) || !p.leave(pcs[2]) {
		t.Error("leave of a live connection reported false")
	}
	p.shutdown()
	for _, i := range []int{3, 4} {
		if !conns[i].closed() || !p.isGone(pcs[i]) {
			t.Errorf("connection %d not closed and gone after shutdown", i)
		}
	}
	if conns[2].closed() {
		t.Error("shutdown closed a connection that had left the set")
	}
	if pc, _ := p.add(newPipeEnd(t), ip); pc != nil {
		t.Error("add after shutdown returned a pending connection")
	}
}

// pipeEnd is a net.Conn that records Close.
type pipeEnd struct {
	net.Conn
	mu       sync.Mutex
	isClosed bool
}

func newPipeEnd(t *testing.T) *pipeEnd {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return &pipeEnd{Conn: a}
}

func (p *pipeEnd) Close() error {
	p.mu.Lock()
	p.isClosed = true
	p.mu.Unlock()
	return p.Conn.Close()
}

func (p *pipeEnd) closed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.isClosed
}

// dialSilent opens n connections to addr that send nothing.
func dialSilent(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var out []net.Conn
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		out = append(out, c)
	}
	return out
}

// isReset reports whether the peer closed c with a reset within d.
func isReset(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	return errors.Is(err, syscall.ECONNRESET)
}

// Silent connections wait without a handshake slot: with one slot and 20
// silent connections, a real client gets its session.
func TestSilentConnsHoldNoHandshakeSlot(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, func(c *Config) { c.MaxHandshakes = 1 })
	dialSilent(t, r.addr, 20)
	waitFor(t, 5*time.Second, func() bool { return r.srv.Stats().Pending["silent"] == 20 })
	s := dialSession(t, pki, r.addr)
	if _, err := openRoute(t, s, header(t, "echo")); err != nil {
		t.Fatalf("stream beside 20 silent connections: %v", err)
	}
	if st := r.srv.Stats(); st.HandshakeLimit != 0 || st.HandshakesInFlight != 0 {
		t.Errorf("Stats = limit %d, in flight %d; want 0, 0", st.HandshakeLimit, st.HandshakesInFlight)
	}
}

// The prologue's deadlines reset a connection that sends nothing, and one
// whose ClientHello does not complete, each under its own reason.
func TestPrologueDeadlines(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, func(c *Config) {
		c.FirstByteTimeout = 300 * time.Millisecond
		c.ClientHelloTimeout = 300 * time.Millisecond
	})
	ch := clientHello(t, pki.clientTLS)
	conns := dialSilent(t, r.addr, 2)
	start := time.Now()
	conns[1].Write(ch[:40]) // conns[0] sends nothing
	for _, c := range conns {
		if !isReset(c, 5*time.Second) {
			t.Fatal("connection not reset by the prologue's deadline")
		}
	}
	t.Logf("both reset after %v (deadlines 300 ms)", time.Since(start).Round(time.Millisecond))
	waitFor(t, 5*time.Second, func() bool {
		return hasEntry(r.log, "event", "conn_rejected", "reason", ReasonFirstByteTimeout, "addr", "127.0.0.1") &&
			hasEntry(r.log, "event", "conn_rejected", "reason", ReasonClientHelloTimeout, "addr", "127.0.0.1")
	})
	st := r.srv.Stats()
	if st.Rejected[ReasonFirstByteTimeout] != 1 || st.Rejected[ReasonClientHelloTimeout] != 1 || st.HandshakesFailed != 0 {
		t.Errorf("Stats = %v, failed %d; want one of each timeout, no failed handshake", st.Rejected, st.HandshakesFailed)
	}
	// A client that is on time is served.
	s := dialSession(t, pki, r.addr)
	if _, err := openRoute(t, s, header(t, "echo")); err != nil {
		t.Fatal(err)
	}
}

// A full pending set resets its oldest silent connection for a newcomer,
// not a connection whose ClientHello has begun, and not the newcomer.
func TestPendingEvictsOldestSilent(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, func(c *Config) { c.MaxPending = 3 })
	slow := dialSilent(t, r.addr, 1)[0]
	slow.Write(clientHello(t, pki.clientTLS)[:10])
	waitFor(t, 5*time.Second, func() bool { return r.srv.Stats().Pending["client_hello"] == 1 })
	oldest := dialSilent(t, r.addr, 1)[0]
	waitFor(t, 5*time.Second, func() bool { return r.srv.Stats().Pending["silent"] == 1 })
	second := dialSilent(t, r.addr, 1)[0]
	waitFor(t, 5*time.Second, func() bool { return r.srv.Stats().Pending["silent"] == 2 })
	newest := dialSilent(t, r.addr, 1)[0]
	if !isReset(oldest, 5*time.Second) {
		t.Fatal("the oldest silent connection was not reset")
	}
	for name, c := range map[string]net.Conn{"slow": slow, "second": second, "newest": newest} {
		if isReset(c, 100*time.Millisecond) {
			t.Errorf("the %s connection was reset", name)
		}
	}
	st := r.srv.Stats()
	if st.LimitHits["pending"] != 1 || st.Rejected[ReasonPendingEvicted] != 1 {
		t.Errorf("Stats = limit hits %v, rejected %v; want one eviction", st.LimitHits, st.Rejected)
	}
	if !hasEntry(r.log, "event", "conn_rejected", "reason", ReasonPendingEvicted) {
		t.Error("no conn_rejected pending_evicted line")
	}
}

// Every reason is in Stats().Rejected from the start, so metrics show it
// at zero.
func TestRejectedReasonsPresentAtZero(t *testing.T) {
	r := startServer(t, newTestPKI(t), nil)
	st := r.srv.Stats()
	for _, reason := range RejectReasons {
		if v, ok := st.Rejected[reason]; !ok || v != 0 {
			t.Errorf("Rejected[%s] = %d, %v; want 0, present", reason, v, ok)
		}
	}
	if len(st.Pending) != 2 {
		t.Errorf("Pending = %v, want both stages", st.Pending)
	}
}

// no_alpn refusals are counted and their lines throttled per address.
func TestNoALPNThrottled(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, nil)
	for range 5 {
		c := dialRaw(t, pki.clientTLS, r.addr)
		io.Copy(io.Discard, c)
	}
	waitFor(t, 5*time.Second, func() bool { return r.srv.Stats().Rejected[ReasonNoALPN] == 5 })
	n := 0
	for _, e := range r.log.AllEntries() {
		if e.Data["event"] == "conn_rejected" && e.Data["reason"] == ReasonNoALPN {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d no_alpn lines for 5 refusals from one address, want 1", n)
	}
}

// A client behind a PROXY upstream whose handshake fails gives its
// per-address slot back: with a cap of one, its next connection is served.
func TestProxiedClientSlotReleased(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, func(c *Config) {
		al, err := netfilter.ParseAllowlist([]string{"192.0.2.7/32"})
		if err != nil {
			t.Fatal(err)
		}
		c.Filter, err = netfilter.NewFilter(netfilter.FilterConfig{Allowlist: al, Log: c.Log, MaxConnsPerAddr: 1})
		if err != nil {
			t.Fatal(err)
		}
		c.ProxyProtocolFrom, _ = netfilter.ParseAllowlist([]string{"127.0.0.1/32"})
	})
	client := netip.MustParseAddrPort("192.0.2.7:40001")
	for range 3 {
		raw := dialSilent(t, r.addr, 1)[0]
		proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(client), raw.RemoteAddr()).WriteTo(raw)
		raw.Write([]byte("GET / HTTP/1.1\r\n\r\n")) // not TLS: the handshake fails
		io.Copy(io.Discard, raw)
		waitFor(t, 5*time.Second, func() bool { return r.srv.cfg.Filter.Stats().Addrs == 0 })
	}
	if _, err := dialViaBalancer(t, pki.clientTLS, r.addr, client.String(), 2); err != nil {
		t.Fatalf("after three failed handshakes the client is refused: %v", err)
	}
}

// The ClientHello buffers of pending connections have a budget: past it
// the oldest unfinished ClientHello goes, and a connection that leaves
// gives its bytes back.
func TestPendingByteBudget(t *testing.T) {
	p := &pendingSet{max: 10, maxBytes: 1000}
	ip := netip.MustParseAddr("127.0.0.1")
	var pcs []*pendingConn
	for range 4 {
		pc, _ := p.add(newPipeEnd(t), ip)
		pcs = append(pcs, pc)
	}
	for _, pc := range pcs[:3] {
		p.started(pc)
	}
	if v := p.hold(pcs[0], 400); v != nil {
		t.Fatalf("within the budget: evicted %v", v)
	}
	p.hold(pcs[1], 400)
	if v := p.hold(pcs[2], 400); len(v) != 1 || v[0].conn != pcs[0].conn {
		t.Fatalf("past the budget: evicted %v, want the oldest ClientHello only", v)
	}
	if _, _, b := p.counts(); b != 800 {
		t.Errorf("bytes held = %d, want 800", b)
	}
	p.leave(pcs[1])
	if v := p.hold(pcs[2], 1000); v != nil {
		t.Errorf("after a leave the budget has room again, yet %v was evicted", v)
	}
	if _, _, b := p.counts(); b != 1000 || p.isGone(pcs[3]) {
		t.Errorf("bytes held = %d, silent connection gone %v; want 1000, false", b, p.isGone(pcs[3]))
	}
}

// Through a server: three ClientHellos arriving slowly, 1500 bytes of 2005
// each (buffers of 2005 bytes), against a 4 KiB budget: the third resets
// the oldest, the others wait on.
func TestPendingByteBudgetServer(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, nil)
	r.srv.pending.mu.Lock()
	r.srv.pending.maxBytes = 4 << 10
	r.srv.pending.mu.Unlock()
	part := append([]byte{22, 3, 1, 0x07, 0xd0, 1, 0, 0x07, 0xcc}, make([]byte, 1491)...) // a 2000-byte record, 1500 sent
	conns := dialSilent(t, r.addr, 3)
	for i, c := range conns {
		c.Write(part)
		waitFor(t, 5*time.Second, func() bool { return r.srv.Stats().Pending["client_hello"] == min(i+1, 2) })
	}
	if !isReset(conns[0], 5*time.Second) {
		t.Fatal("the oldest ClientHello was not reset past the byte budget")
	}
	for i, c := range conns[1:] {
		if isReset(c, 100*time.Millisecond) {
			t.Errorf("ClientHello %d was reset", i+1)
		}
	}
	if n := r.srv.Stats().Rejected[ReasonPendingEvicted]; n != 1 {
		t.Errorf("Rejected[pending_evicted] = %d, want 1", n)
	}
}
