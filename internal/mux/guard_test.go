package mux

import (
	"bytes"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"
)

// rawPeer is a hostile yamux client: it writes frames of its choosing to a
// guarded Server session and collects what the server writes back.
type rawPeer struct {
	t    *testing.T
	conn net.Conn
	srv  *Session

	mu     sync.Mutex
	frames []rawFrame // what the server sent; guarded by mu
}

type rawFrame struct {
	h    header
	body []byte
}

// newRawPeer starts a Server session with opts applied to its Options, and
// a raw client connected to it. With read, the raw client reads what the
// server writes; without, it never reads.
func newRawPeer(t *testing.T, read bool, opts ...func(*Options)) *rawPeer {
	t.Helper()
	c, sc := tcpConns(t)
	o := Options{Log: testLog(), MaxStreams: 64, Refusal: []byte{4}}
	for _, f := range opts {
		f(&o)
	}
	srv, err := Server(sc, o)
	if err != nil {
		t.Fatal(err)
	}
	p := &rawPeer{t: t, conn: c, srv: srv}
	var wg sync.WaitGroup
	if read {
		wg.Go(p.readLoop)
	}
	t.Cleanup(func() { srv.Close(); c.Close(); wg.Wait() })
	return p
}

func (p *rawPeer) readLoop() {
	for {
		var h header
		if _, err := io.ReadFull(p.conn, h[:]); err != nil {
			return
		}
		f := rawFrame{h: h}
		if h.typ() == typeData && h.length() > 0 {
			f.body = make([]byte, h.length())
			if _, err := io.ReadFull(p.conn, f.body); err != nil {
				return
			}
		}
		p.mu.Lock()
		p.frames = append(p.frames, f)
		p.mu.Unlock()
	}
}

// send writes frames; a data frame's body is body bytes of 'x'.
func (p *rawPeer) send(hs ...header) error {
	var b []byte
	for _, h := range hs {
		b = append(b, h[:]...)
		if h.typ() == typeData {
			b = append(b, bytes.Repeat([]byte{'x'}, int(h.length()))...)
		}
	}
	p.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := p.conn.Write(b)
	return err
}

// received returns the frames the server sent that match.
func (p *rawPeer) received(match func(rawFrame) bool) []rawFrame {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []rawFrame
	for _, f := range p.frames {
		if match(f) {
			out = append(out, f)
		}
	}
	return out
}

// ended waits for the server session to end and returns the violation
// that ended it.
func (p *rawPeer) ended() *ViolationError {
	p.t.Helper()
	select {
	case <-p.srv.CloseChan():
	case <-time.After(10 * time.Second):
		p.t.Fatal("the server session did not end within 10 s")
	}
	_, err := p.srv.Accept()
	v, ok := errors.AsType[*ViolationError](err)
	if !ok {
		p.t.Fatalf("the session ended with %v, not a protocol violation", err)
	}
	if p.srv.Violation() != v {
		p.t.Errorf("Violation() = %v, Accept's error says %v", p.srv.Violation(), v)
	}
	return v
}

func syn(id, n uint32) header  { return makeHeader(typeData, flagSYN, id, n) }
func data(id, n uint32) header { return makeHeader(typeData, 0, id, n) }

// Each frame a well-behaved peer never sends ends the session with a
// protocol violation of its kind.
func TestGuardViolations(t *testing.T) {
	tests := []struct {
		name   string
		frames []header
		kind   string
	}{
		{"bad version", []header{{1, typePing, 0, 1}}, ViolationBadVersion},
		{"bad type", []header{makeHeader(7, 0, 0, 0)}, ViolationBadType},
		{"unknown flag", []header{makeHeader(typeWindowUpdate, flagSYN|0x10, 1, 0)}, ViolationBadFlags},
		{"stream zero", []header{makeHeader(typeData, 0, 0, 0)}, ViolationStreamZero},
		{"server parity", []header{syn(2, 1)}, ViolationStreamParity},
		{"stream opened twice", []header{syn(1, 1), syn(1, 1)}, ViolationDuplicate},
		{"stream never opened", []header{data(7, 1)}, ViolationUnknownStream},
		{"data past the initial window in one frame", []header{syn(1, initialWindow+1)}, ViolationWindowExceeded},
		{"data past the window in two frames", []header{syn(1, initialWindow), data(1, 1)}, ViolationWindowExceeded},
		{"data after FIN", []header{makeHeader(typeData, flagSYN|flagFIN, 1, 1), data(1, 1)}, ViolationDataAfterFIN},
		{"two FINs", []header{makeHeader(typeData, flagSYN|flagFIN, 1, 1), makeHeader(typeWindowUpdate, flagFIN, 1, 0)}, ViolationDuplicateFIN},
		{"window overflow", []header{syn(1, 0), makeHeader(typeWindowUpdate, 0, 1, 1<<32-1)}, ViolationWindowOverflow},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newRawPeer(t, true)
			go func() { // the application: accept and hold streams, reading nothing
				for {
					if _, err := p.srv.Accept(); err != nil {
						return
					}
				}
			}()
			if err := p.send(tt.frames...); err != nil {
				t.Fatal(err)
			}
			if v := p.ended(); v.Kind != tt.kind {
				t.Errorf("violation %q (%v), want %q", v.Kind, v, tt.kind)
			}
		})
	}
}

// A ping flood from a peer that never reads the answers ends its session
// with ping_flood, and costs no goroutine per ping (yamux alone starts one
// for each: 175 000 were measured from one connection).
func TestGuardPingFlood(t *testing.T) {
	before := runtime.NumGoroutine()
	p := newRawPeer(t, false)
	pings := make([]header, 0, 300_000)
	for i := range uint32(300_000) {
		pings = append(pings, makeHeader(typePing, flagSYN, 0, i))
	}
	go p.send(pings...) // blocks once the server stops reading; ends at cleanup
	v := p.ended()
	if v.Kind != ViolationPingFlood {
		t.Fatalf("violation %q, want %q", v.Kind, ViolationPingFlood)
	}
	if n := runtime.NumGoroutine(); n > before+20 {
		t.Errorf("%d goroutines during a ping flood, %d before", n, before)
	}
	t.Logf("ping flood ended: %v; goroutines %d before, %d after", v, before, runtime.NumGoroutine())
}

// Pings are answered by the guard, with the peer's opaque value; yamux
// never sees them.
func TestGuardAnswersPings(t *testing.T) {
	p := newRawPeer(t, true)
	for i := range uint32(10) {
		if err := p.send(makeHeader(typePing, flagSYN, 0, 1000+i)); err != nil {
			t.Fatal(err)
		}
	}
	pong := func(f rawFrame) bool { return f.h.typ() == typePing && f.h.has(flagACK) }
	waitFor(t, 5*time.Second, "10 pongs", func() bool { return len(p.received(pong)) == 10 })
	for i, f := range p.received(pong) {
		if f.h.length() != uint32(1000+i) {
			t.Errorf("pong %d answers %d, want %d", i, f.h.length(), 1000+i)
		}
	}
}

// A stream past MaxStreams is refused before its data is buffered: it gets
// the refusal and a FIN, yamux never sees it, and its data and later frames
// are dropped unread.
func TestGuardStreamCap(t *testing.T) {
	var events []LimitEvent
	var mu sync.Mutex
	p := newRawPeer(t, true, func(o *Options) {
		o.MaxStreams = 2
		o.OnLimit = func(e LimitEvent) { mu.Lock(); events = append(events, e); mu.Unlock() }
	})
	if err := p.send(syn(1, 100<<10), syn(3, 100<<10), syn(5, 200<<10), data(5, 50<<10)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := p.srv.Accept(); err != nil {
			t.Fatal(err)
		}
	}
	refusal := func(f rawFrame) bool {
		return f.h.streamID() == 5 && f.h.has(flagACK) && f.h.has(flagFIN) && bytes.Equal(f.body, []byte{4})
	}
	waitFor(t, 5*time.Second, "the refusal of stream 5", func() bool { return len(p.received(refusal)) == 1 })
	if held := p.srv.Budget().Held(); held != 200<<10 {
		t.Errorf("the session holds %d bytes, want the %d of the two admitted streams", held, 200<<10)
	}
	if n := p.srv.NumStreams(); n != 2 {
		t.Errorf("yamux holds %d streams, want 2", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 1 || events[0] != (LimitEvent{Reason: ReasonStreamCap, StreamID: 5}) {
		t.Errorf("limit events %+v, want one streams_per_session refusal of stream 5", events)
	}
}

// StreamRate refuses opens past the rate with the same refusal: after a
// burst of MaxStreams, opens wait for the rate.
func TestGuardStreamRate(t *testing.T) {
	var refused []LimitEvent
	var mu sync.Mutex
	p := newRawPeer(t, true, func(o *Options) {
		o.MaxStreams = 3 // the burst
		o.StreamRate = 0.001
		o.OnLimit = func(e LimitEvent) { mu.Lock(); refused = append(refused, e); mu.Unlock() }
	})
	go func() { // the application closes every stream at once
		for {
			st, err := p.srv.Accept()
			if err != nil {
				return
			}
			st.Close()
		}
	}()
	open := func(ids ...uint32) {
		for _, id := range ids {
			if err := p.send(makeHeader(typeData, flagSYN|flagFIN, id, 1)); err != nil {
				t.Fatal(err)
			}
		}
	}
	open(1, 3, 5) // the burst
	fin := func(f rawFrame) bool { return f.h.has(flagFIN) }
	waitFor(t, 5*time.Second, "the burst closed", func() bool { return len(p.received(fin)) == 3 })
	open(7, 9)
	waitFor(t, 5*time.Second, "2 refusals", func() bool { mu.Lock(); defer mu.Unlock(); return len(refused) == 2 })
	for _, e := range refused {
		if e.Reason != ReasonStreamRate || e.Reset {
			t.Errorf("limit event %+v, want a stream_rate refusal", e)
		}
	}
}

// A session's budget holds: streams whose reader never reads cannot make
// the session hold more than its budget. New streams are refused once it
// is three quarters full; a frame past it resets its stream.
func TestGuardBudget(t *testing.T) {
	const limit = 1 << 20
	var events []LimitEvent
	var mu sync.Mutex
	p := newRawPeer(t, true, func(o *Options) {
		o.Budget = NewBudget(limit, nil)
		o.OnLimit = func(e LimitEvent) { mu.Lock(); events = append(events, e); mu.Unlock() }
	})
	go func() {
		for {
			if _, err := p.srv.Accept(); err != nil {
				return
			}
		}
	}()
	// Three streams of 256 KiB fill three quarters: a fourth is refused.
	var hs []header
	for id := uint32(1); id <= 5; id += 2 {
		hs = append(hs, syn(id, initialWindow))
	}
	if err := p.send(hs...); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "three full streams", func() bool { return p.srv.Budget().Held() == 3*initialWindow })
	if err := p.send(syn(7, 1)); err != nil { // refused: the budget is 3/4 full
		t.Fatal(err)
	}
	// Five streams admitted while the budget was empty, then filling their
	// windows, would hold 1.25 MiB: the frame that passes 1 MiB resets its
	// stream.
	p2 := newRawPeer(t, true, func(o *Options) {
		o.Budget = NewBudget(limit, nil)
		o.OnLimit = func(e LimitEvent) { mu.Lock(); events = append(events, e); mu.Unlock() }
	})
	go func() {
		for {
			if _, err := p2.srv.Accept(); err != nil {
				return
			}
		}
	}()
	hs = hs[:0]
	for id := uint32(1); id <= 9; id += 2 { // five streams admitted at once, one byte each
		hs = append(hs, syn(id, 1))
	}
	for id := uint32(1); id <= 9; id += 2 { // then each fills its window: 5 x 256 KiB > 1 MiB
		hs = append(hs, data(id, initialWindow-1))
	}
	if err := p2.send(hs...); err != nil {
		t.Fatal(err)
	}
	rst := func(f rawFrame) bool { return f.h.has(flagRST) }
	waitFor(t, 5*time.Second, "a stream reset for the budget", func() bool { return len(p2.received(rst)) >= 1 })
	if held := p2.srv.Budget().Held(); held > limit {
		t.Errorf("the session holds %d bytes, past its budget of %d", held, limit)
	}
	mu.Lock()
	defer mu.Unlock()
	var refusedNew, reset bool
	for _, e := range events {
		refusedNew = refusedNew || e.Reason == ReasonBudget && !e.Reset && e.StreamID == 7
		reset = reset || e.Reason == ReasonBudget && e.Reset
	}
	if !refusedNew || !reset {
		t.Errorf("limit events %+v: want stream 7 refused and a stream reset, both for the budget", events)
	}
}

// The refused-stream flood: streams that get a refusal from the
// application, then push data and never send FIN, hold nothing.
func TestGuardRefusedStreamsHoldNothing(t *testing.T) {
	p := newRawPeer(t, true, func(o *Options) { o.MaxStreams = 4096 })
	go func() { // the application refuses every stream: a status byte, then Close
		for {
			st, err := p.srv.Accept()
			if err != nil {
				return
			}
			go func() {
				st.Write([]byte{5})
				st.Close()
			}()
		}
	}()
	const streams = 500
	for id := uint32(1); id < 2*streams; id += 2 {
		if err := p.send(syn(id, 10)); err != nil {
			t.Fatal(err)
		}
	}
	status := func(f rawFrame) bool { return f.h.typ() == typeData && bytes.Equal(f.body, []byte{5}) }
	waitFor(t, 20*time.Second, "every refusal", func() bool { return len(p.received(status)) == streams })
	// Now each pushes 200 KiB it has credit for, and never finishes.
	for id := uint32(1); id < 2*streams; id += 2 {
		if err := p.send(data(id, 200<<10)); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.send(makeHeader(typePing, flagSYN, 0, 42)); err != nil { // a marker: everything before it was read
		t.Fatal(err)
	}
	pong := func(f rawFrame) bool { return f.h.typ() == typePing && f.h.length() == 42 }
	waitFor(t, 20*time.Second, "the marker's pong", func() bool { return len(p.received(pong)) == 1 })
	if held := p.srv.Budget().Held(); held != 0 {
		t.Errorf("after %d refused streams pushed 200 KiB each, the session holds %d bytes", streams, held)
	}
	if n := p.srv.NumStreams(); n != 0 {
		t.Errorf("yamux still holds %d refused streams", n)
	}
}

// A peer that floods refused opens without reading what we answer has its
// session ended once the unwritten answers pass the backlog bound.
func TestGuardControlBacklog(t *testing.T) {
	p := newRawPeer(t, false, func(o *Options) { o.MaxStreams = 0 })
	go func() {
		batch := make([]header, 0, 1024)
		for id := uint32(1); id < 1<<24; id += 2 {
			if batch = append(batch, syn(id, 0)); len(batch) == cap(batch) {
				if p.send(batch...) != nil {
					return
				}
				batch = batch[:0]
			}
		}
	}()
	if v := p.ended(); v.Kind != ViolationControlBacklog {
		t.Fatalf("violation %q, want %q", v.Kind, ViolationControlBacklog)
	}
}

// yamux numbers a stream before its SYN goes out, so concurrent opens
// reach the peer out of order: the guard admits them.
func TestGuardOutOfOrderOpens(t *testing.T) {
	p := newRawPeer(t, true)
	if err := p.send(syn(5, 1), syn(3, 1), syn(1, 1)); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := p.srv.Accept(); err != nil {
			t.Fatal(err)
		}
	}
}
