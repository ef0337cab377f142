package server

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/wire"
	"github.com/tunnel-dev/tunnel/netfilter"
)

func TestParseExpose(t *testing.T) {
	tests := []struct {
		in      string
		listen  string
		name    string
		allow   string
		rules   string
		conns   int
		streams int
		err     string
	}{
		{in: "0.0.0.0:2222=ssh,allow=203.0.113.0/24,publisher=cn:laptop", listen: "0.0.0.0:2222", name: "ssh", allow: "203.0.113.0/24", rules: "cn:laptop"},
		{in: " :5432 = db , allow=10.0.0.0/8 , allow=::1 , publisher=dns:*.edge , publisher=cn:b , max-conns-per-addr=16 , max-streams-per-publisher=8 ",
			listen: ":5432", name: "db", allow: "10.0.0.0/8,::1/128", rules: "dns:*.edge, cn:b", conns: 16, streams: 8},
		{in: "[::1]:0=x,allow=::/0,publisher=sha256:" + strings.Repeat("ab", 32), listen: "[::1]:0", name: "x", allow: "::/0", rules: "sha256:" + strings.Repeat("ab", 32)},
		{in: "127.0.0.1:1=db", err: "no allowlist"},
		{in: "127.0.0.1:1=db,allow=10.0.0.0/8", err: "no publisher rule"},
		{in: "127.0.0.1:1=db,publisher=cn:a", err: "no allowlist"},
		{in: "db=127.0.0.1:1,allow=10.0.0.0/8,publisher=cn:a", err: "listen address"},
		{in: "example.com:1=db,allow=10.0.0.0/8,publisher=cn:a", err: "host must be an IP address"},
		{in: "127.0.0.1:99999=db,allow=10.0.0.0/8,publisher=cn:a", err: "port"},
		{in: "127.0.0.1:1=d/b,allow=10.0.0.0/8,publisher=cn:a", err: "route name"},
		{in: "127.0.0.1:1=db,allow=10.0.0.0/33,publisher=cn:a", err: "10.0.0.0/33"},
		{in: "127.0.0.1:1=db,allow=10.0.0.0/8,publisher=cn:*", err: "wildcard"},
		{in: "127.0.0.1:1=db,allow=10.0.0.0/8,publisher=cn:a,max-conns-per-addr=-1", err: "not a number of 0 or more"},
		{in: "127.0.0.1:1=db,allow=10.0.0.0/8,publisher=cn:a,max-streams-per-publisher=x", err: "not a number"},
		{in: "127.0.0.1:1=db,allow=10.0.0.0/8,publisher=cn:a,proxy-v2", err: "want KEY=VALUE"},
		{in: "127.0.0.1:1=db,allow=10.0.0.0/8,publisher=cn:a,colour=red", err: "unknown option"},
		{in: "127.0.0.1:1", err: "want LISTEN=NAME"},
	}
	for _, tt := range tests {
		listen, x, err := ParseExpose(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseExpose(%q) = %v, want an error containing %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseExpose(%q): %v", tt.in, err)
			continue
		}
		var rules []string
		for _, r := range x.Publishers.Identities {
			rules = append(rules, r.String())
		}
		if listen != tt.listen || x.Name != tt.name || x.Allow.String() != tt.allow || strings.Join(rules, ", ") != tt.rules ||
			x.MaxConnsPerAddr != tt.conns || x.MaxStreamsPerPublisher != tt.streams || x.Publishers.Name != "exposes."+tt.name+".publishers" {
			t.Errorf("ParseExpose(%q) = %q, %+v (allow %s, rules %v, rule set %s)", tt.in, listen, x, x.Allow, rules, x.Publishers.Name)
		}
	}
}

// mustExpose parses an --expose value or fails the test.
func mustExpose(t *testing.T, s string) Expose {
	t.Helper()
	_, x, err := ParseExpose(s)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func TestNewRejectsBadExposes(t *testing.T) {
	pki := newTestPKI(t)
	log := logrus.NewEntry(logrus.New())
	al, _ := netfilter.ParseAllowlist([]string{"127.0.0.1/32"})
	f, _ := netfilter.NewFilter(netfilter.FilterConfig{Allowlist: al, Log: log})
	svc := mustExpose(t, "127.0.0.1:0=svc,allow=127.0.0.1/32,publisher=cn:app1")
	for _, tt := range []struct {
		name    string
		routes  []Route
		exposes []Expose
		err     string
	}{
		{"twice", nil, []Expose{svc, svc}, `expose "svc" configured twice`},
		{"a route's name", []Route{{Name: "svc", Target: "127.0.0.1:1"}}, []Expose{svc}, "has the name of a route"},
		{"no allowlist", nil, []Expose{{Name: "x", Publishers: svc.Publishers}}, "no allowlist"},
		{"no publisher", nil, []Expose{{Name: "x", Allow: al}}, "no publisher rule"},
		{"no publisher identities", nil, []Expose{{Name: "x", Allow: al, Publishers: &Access{Allow: al}}}, "no publisher rule"},
		{"negative cap", nil, []Expose{{Name: "x", Allow: al, Publishers: svc.Publishers, MaxStreamsPerPublisher: -1}}, "negative"},
		{"nothing at all", nil, nil, "no routes configured"},
	} {
		_, err := New(Config{Trust: pki.serverStore, Filter: f, Log: log, Routes: tt.routes, Exposes: tt.exposes})
		var fe *FieldError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s: New = %v, want a *FieldError containing %q", tt.name, err, tt.err)
		}
	}
	if _, err := New(Config{Trust: pki.serverStore, Filter: f, Log: log, Exposes: []Expose{svc}}); err != nil {
		t.Errorf("a server with an expose and no route: %v", err)
	}
}

// exposeWorld is a server with the expose svc (publishers cn:app1, at most
// cap streams per publisher), serving it on a listener of its own.
type exposeWorld struct {
	*running
	expose string // the expose's address
}

func startExpose(t *testing.T, pki testPKI, spec string) exposeWorld {
	t.Helper()
	x := mustExpose(t, spec)
	r := startServer(t, pki, func(c *Config) { c.Exposes = []Expose{x} })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.srv.ServeExpose(ctx, x.Name, ln) }()
	t.Cleanup(func() {
		cancel()
		r.stop()
		if err := <-done; err != nil {
			t.Errorf("ServeExpose: %v", err)
		}
	})
	return exposeWorld{running: r, expose: ln.Addr().String()}
}

// publish opens a publish stream for name on s and returns it with the
// server's status.
func publish(t *testing.T, s *yamux.Session, name string) (*yamux.Stream, error) {
	t.Helper()
	hdr, err := wire.AppendPublish(nil, name)
	if err != nil {
		t.Fatal(err)
	}
	return openRoute(t, s, hdr)
}

// TestPublishProtocol walks the publish and connect headers through a
// server with a plain yamux client standing in for a publisher: a refused
// name, a second publication of a name on one session, the connect header
// of an inbound connection with its addresses, the status, the bytes both
// ways, and a publish stream that carries a byte, which ends it.
func TestPublishProtocol(t *testing.T) {
	pki := newTestPKI(t)
	w := startExpose(t, pki, "127.0.0.1:0=svc,allow=127.0.0.1/32,publisher=cn:app1")
	s := dialSession(t, pki, w.addr)

	if _, err := publish(t, s, "nope"); !isStatus(err, wire.StatusUnknownRoute) {
		t.Errorf("publishing an unknown name: %v, want unknown_route", err)
	}
	pub, err := publish(t, s, "svc")
	if err != nil {
		t.Fatalf("publishing svc: %v", err)
	}
	if _, err := publish(t, s, "svc"); !isStatus(err, wire.StatusOverLimit) {
		t.Errorf("publishing svc twice on one session: %v, want over_limit", err)
	}
	other := dialSessionAs(t, pki.otherTLS, w.addr)
	if _, err := publish(t, other, "svc"); !isStatus(err, wire.StatusForbidden) {
		t.Errorf("publishing svc as app2: %v, want forbidden", err)
	}
	waitFor(t, 5*time.Second, func() bool { return len(w.srv.Stats().Exposes["svc"].Publishers) == 1 })

	in, err := net.Dial("tcp", w.expose)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	in.Write([]byte("early")) // waits in the socket until the publisher's status
	st, err := s.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(10 * time.Second))
	c, err := wire.ReadConnect(st)
	if err != nil {
		t.Fatal(err)
	}
	want := wire.Connect{Name: "svc", Source: netip.MustParseAddrPort(in.LocalAddr().String()), Dest: netip.MustParseAddrPort(w.expose)}
	if c != want {
		t.Errorf("connect header %+v, want %+v", c, want)
	}
	if err := wire.WriteStatus(st, wire.StatusOK); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(st, got); err != nil || string(got) != "early" {
		t.Fatalf("the inbound bytes on the reverse stream: %q, %v", got, err)
	}
	st.Write([]byte("back"))
	in.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(in, got[:4]); err != nil || string(got[:4]) != "back" {
		t.Fatalf("the published service's bytes on the inbound connection: %q, %v", got[:4], err)
	}

	// A byte on the publish stream breaks the protocol: the server resets
	// it and the publication is gone.
	pub.Write([]byte("x"))
	waitFor(t, 5*time.Second, func() bool { return len(w.srv.Stats().Exposes["svc"].Publishers) == 0 })
	waitFor(t, 5*time.Second, func() bool { return hasEntry(w.log, "event", "publish_removed", "reason", ReasonPublishProtocol) })
	if _, err := pub.Read(got); err == nil {
		t.Error("the publish stream is still open after a byte on it")
	}
}

// TestPublicationsPick: the fewest active first, ties to the least used,
// within the cap and the tried set, never a closed or departing session.
func TestPublicationsPick(t *testing.T) {
	pki := newTestPKI(t)
	w := startExpose(t, pki, "127.0.0.1:0=svc,allow=127.0.0.1/32,publisher=cn:app1,publisher=cn:app2")
	a, b := dialSession(t, pki, w.addr), dialSessionAs(t, pki.otherTLS, w.addr)
	for _, s := range []*yamux.Session{a, b} {
		if _, err := publish(t, s, "svc"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, func() bool { return len(w.srv.pubs.of("svc")) == 2 })
	pubs := &w.srv.pubs
	var picked []*publication
	defer func() {
		for _, p := range picked {
			p.release()
		}
	}()
	pick := func(capacity int, tried map[*publication]bool) (*publication, string) {
		p, why := pubs.pick("svc", capacity, tried)
		if p != nil {
			picked = append(picked, p)
		}
		return p, why
	}
	if p, why := pubs.pick("other", 10, nil); p != nil || why != ReasonNoPublisher {
		t.Errorf("pick of a name nobody publishes = %v, %q", p, why)
	}
	first, _ := pick(2, nil)
	second, _ := pick(2, nil)
	if first == nil || second == nil || first == second {
		t.Fatalf("two picks = %v, %v: want both publishers", first, second)
	}
	third, _ := pick(2, nil) // a tie at one each: either
	fourth, _ := pick(2, nil)
	if third == nil || fourth == nil || third == fourth {
		t.Fatalf("picks three and four = %v, %v: want one on each", third, fourth)
	}
	if p, why := pick(2, nil); p != nil || why != ReasonPublisherLimit {
		t.Errorf("a pick with both at the cap = %v, %q; want publisher_limit", p, why)
	}
	first.release()
	picked = picked[1:]
	if p, _ := pick(2, nil); p != first {
		t.Errorf("after a release, the pick is %v, want the one released", p)
	}
	if p, why := pick(10, map[*publication]bool{first: true, second: true}); p != nil || why != ReasonPublisherFailed {
		t.Errorf("a pick with both tried = %v, %q; want publisher_failed", p, why)
	}
	first.ss.away.Store(true)
	if p, _ := pick(10, nil); p != second {
		t.Errorf("with one session going away, the pick is %v, want the other", p)
	}
}

// TestReloadExposes: a reload that drops an expose withdraws its
// publications (the publisher sees its stream end) and makes its listener
// reset every connection; one that brings it back with another allowlist
// filters by that one.
func TestReloadExposes(t *testing.T) {
	pki := newTestPKI(t)
	w := startExpose(t, pki, "127.0.0.1:0=svc,allow=127.0.0.1/32,publisher=cn:app1")
	s := dialSession(t, pki, w.addr)
	pub, err := publish(t, s, "svc")
	if err != nil {
		t.Fatal(err)
	}
	al, _ := netfilter.ParseAllowlist([]string{"127.0.0.1/32"})
	routes := []Route{{Name: "echo", Target: "127.0.0.1:1"}}
	if _, err := w.srv.Reload(State{Material: pki.serverStore.Material(), Allowlist: al, Routes: routes}); err != nil {
		t.Fatal(err)
	}
	pub.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := pub.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the publish stream after the expose was removed: %v, want EOF (withdrawn)", err)
	}
	waitFor(t, 5*time.Second, func() bool { return hasEntry(w.log, "event", "publish_removed", "reason", ReasonExposeRemoved) })
	if err := w.srv.ExposesDown()["svc"]; !errors.Is(err, errExposeRemoved) {
		t.Errorf("ExposesDown after the removal: %v", err)
	}
	expectResetNow(t, w.expose)
	waitFor(t, 5*time.Second, func() bool { return w.srv.Stats().Exposes["svc"].Rejected[ReasonExposeRemoved] == 1 })

	back := mustExpose(t, "127.0.0.1:0=svc,allow=127.0.0.2/32,publisher=cn:app1")
	if _, err := w.srv.Reload(State{Material: pki.serverStore.Material(), Allowlist: al, Routes: routes, Exposes: []Expose{back}}); err != nil {
		t.Fatal(err)
	}
	expectResetNow(t, w.expose)
	waitFor(t, 5*time.Second, func() bool { return w.srv.Stats().Exposes["svc"].Rejected[netfilter.ReasonIPNotAllowed] == 1 })
}

// expectResetNow dials addr and checks the connection is reset unanswered.
func expectResetNow(t *testing.T, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return // reset before connect returned
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a connection to %s: read %d bytes, %v; want a reset", addr, n, err)
	}
}
