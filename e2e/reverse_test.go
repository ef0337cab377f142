package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Reverse tunnels (issue 18): a client publishes a service that sits behind
// it (--publish NAME=TARGET); the server exposes it on a listener of its
// own (--expose LISTEN=NAME,allow=...,publisher=...), and carries each
// inbound connection there on a stream it opens toward the client.

// exposeSpec is an --expose value on 127.0.0.1:0 for name, open to
// 127.0.0.1 (and allow's extra entries), publishable by the identities
// rules, with more options after them.
func exposeSpec(name string, rules []string, opts ...string) string {
	s := "127.0.0.1:0=" + name + ",allow=127.0.0.1/32"
	for _, r := range rules {
		s += ",publisher=" + r
	}
	for _, o := range opts {
		s += "," + o
	}
	return s
}

// exposeServer starts a server of pk with routes (may be none), the
// exposes (--expose values) and extra flags.
func exposeServer(t *testing.T, pk *pki, routes, exposes []string, extra ...string) *proc {
	t.Helper()
	args := serverArgs(pk, "127.0.0.1:0", routes...)
	for _, x := range exposes {
		args = append(args, "--expose", x)
	}
	return startProc(t, append(args, extra...)...)
}

// exposeAddr waits for the listener_started line of the expose name and
// returns its bound address.
func (p *proc) exposeAddr(t *testing.T, name string) string {
	t.Helper()
	return listenOf(t, p.waitEvent(t, waitTimeout, "listener_started of expose "+name,
		isEvent("listener_started", "component", "expose", "expose", name)))
}

// publisherArgs are the arguments of a client of server with certificate
// cert/key that publishes each NAME=TARGET of publishes and forwards
// nothing.
func publisherArgs(pk *pki, server, cert, key string, publishes ...string) []string {
	args := []string{"client", "--server", server, "--server-name", "localhost",
		"--cert", cert, "--key", key, "--ca", pk.ca, "--connect-timeout", "10s",
		"--log-format", "json", "--log-level", "debug"}
	for _, p := range publishes {
		args = append(args, "--publish", p)
	}
	return args
}

// startPublisher starts a publishing client with pk's client certificate
// (CN app1) and waits until the server holds each publication live.
func startPublisher(t *testing.T, pk *pki, srv *proc, publishes ...string) *proc {
	t.Helper()
	cli := startProc(t, publisherArgs(pk, srv.addr(t), pk.clientCert, pk.clientKey, publishes...)...)
	for _, p := range publishes {
		name, _, _ := strings.Cut(p, "=")
		cli.waitEvent(t, waitTimeout, "publish_added "+name, isEvent("publish_added", "expose", name))
	}
	return cli
}

// dialExpose connects to an expose from 127.0.0.1 and closes the
// connection when the test ends.
func dialExpose(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	return dialLocal(t, addr) // the same dial: only the address differs
}

// expectReset connects from src to addr, writes payload and checks the
// connection is reset (at the connect already, when the RST comes first),
// never answered; it returns how long the reset took from the dial.
func expectReset(t *testing.T, src, addr string, payload []byte) time.Duration {
	t.Helper()
	start := time.Now()
	c, err := dialFrom(src, addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return time.Since(start) // reset before connect returned
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(payload); errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		// The reset came first and the write took its error; a read
		// would now see a plain EOF.
		return time.Since(start)
	}
	err = readUntilErr(c, waitTimeout)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a connection from %s to %s ended with %v, want a reset", src, addr, err)
	}
	return time.Since(start)
}

// TestReverseBulkBothWays moves 64 MiB each way at once through a published
// service and checks both SHA-256 sums; then, through the same two
// processes, the same through a forward route, and logs the throughput of
// both: the reverse stream next to the forward one, same machine, same run.
func TestReverseBulkBothWays(t *testing.T) {
	t.Parallel()
	const size = 64 << 20
	revBackend, revRes := sourceSinkBackend(t, 2, size)
	fwdBackend, fwdRes := sourceSinkBackend(t, 4, size)
	pk := pkiDir(t)
	srv := exposeServer(t, pk, []string{"fwd=" + fwdBackend}, []string{exposeSpec("rev", []string{"cn:app1"})})
	args := append(publisherArgs(pk, srv.addr(t), pk.clientCert, pk.clientKey, "rev="+revBackend), "--forward", "127.0.0.1:0=fwd")
	cli := startProc(t, args...)
	cli.waitEvent(t, waitTimeout, "publish_added", isEvent("publish_added", "expose", "rev"))

	rev := bothWays(t, srv.exposeAddr(t, "rev"), revRes, size, 1)
	fwd := bothWays(t, cli.forwardAddr(t, "fwd"), fwdRes, size, 3)
	mbps := func(d time.Duration) float64 { return 2 * size / d.Seconds() / 1e6 }
	t.Logf("64 MiB each way at once, SHA-256 equal both ways: reverse (expose -> publisher) %v = %.0f MB/s both directions together; forward (client -> route) %v = %.0f MB/s",
		rev.Round(time.Millisecond), mbps(rev), fwd.Round(time.Millisecond), mbps(fwd))

	ev := srv.waitEvent(t, waitTimeout, "the reverse stream's stream_closed", isEvent("stream_closed", "direction", "reverse", "expose", "rev"))
	if ev["bytes_in"] != float64(size) || ev["bytes_out"] != float64(size) {
		t.Errorf("server stream_closed of the reverse stream: bytes_in %v, bytes_out %v, want %d each", ev["bytes_in"], ev["bytes_out"], size)
	}
	srv.waitEvent(t, waitTimeout, "the forward stream's stream_closed", isEvent("stream_closed", "direction", "forward", "route", "fwd"))
	cli.waitEvent(t, waitTimeout, "the client's reverse stream_closed", isEvent("stream_closed", "direction", "reverse", "expose", "rev"))
}

// TestReverseHalfClose: shutting one write half reaches the far end as EOF
// while the other direction keeps going, both ways round, through an
// expose: the inbound side closes first, and the published service does.
func TestReverseHalfClose(t *testing.T) {
	t.Parallel()
	const size = 1 << 20
	pk := pkiDir(t)
	answerer, answerSeed := answerBackend(t, size)
	greeter, greeted := greetBackend(t, size)
	srv := exposeServer(t, pk, nil, []string{exposeSpec("answer", []string{"cn:app1"}), exposeSpec("greet", []string{"cn:app1"})})
	startPublisher(t, pk, srv, "answer="+answerer, "greet="+greeter)
	t.Run("inbound closes first", func(t *testing.T) {
		checkClientClosesFirst(t, srv.exposeAddr(t, "answer"), answerSeed, size)
	})
	t.Run("published service closes first", func(t *testing.T) {
		checkBackendClosesFirst(t, srv.exposeAddr(t, "greet"), greeted, size)
	})
}

// TestReverseResetPropagation: an abortive close at either end of a
// reverse stream reaches the other end as a reset, not as a clean EOF.
func TestReverseResetPropagation(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	resetter := resetterBackend(t)
	witness, witnessed := witnessBackend(t)
	srv := exposeServer(t, pk, nil, []string{exposeSpec("resetter", []string{"cn:app1"}), exposeSpec("witness", []string{"cn:app1"})})
	startPublisher(t, pk, srv, "resetter="+resetter, "witness="+witness)

	t.Run("published service resets", func(t *testing.T) {
		c := exchangeByte(t, srv.exposeAddr(t, "resetter"))
		if err := readUntilErr(c, waitTimeout); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("the inbound connection's read ended with %v, want ECONNRESET (the published service reset)", err)
		}
	})
	t.Run("inbound side resets", func(t *testing.T) {
		c := exchangeByte(t, srv.exposeAddr(t, "witness"))
		start := time.Now()
		abortConn(t, c)
		select {
		case err := <-witnessed:
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("the published service's read ended with %v, want ECONNRESET (the inbound side reset)", err)
			}
			t.Logf("the inbound reset reached the published service in %v", time.Since(start).Round(time.Microsecond))
		case <-time.After(waitTimeout):
			t.Fatal("the published service's read did not end")
		}
	})
}

// TestReverseProxyV2: a publication with ,proxy-v2 gives its target a
// PROXY v2 header naming the inbound connection's address (from
// 127.0.0.2) and the expose's listener, then the bytes unchanged.
func TestReverseProxyV2(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	backend, seen := proxyEchoBackend(t, parseV2TCP4)
	spec := "127.0.0.1:0=svc,allow=127.0.0.2/32,publisher=cn:app1"
	srv := exposeServer(t, pk, nil, []string{spec})
	startPublisher(t, pk, srv, "svc="+backend+",proxy-v2")
	addr := srv.exposeAddr(t, "svc")

	c, err := dialFrom("127.0.0.2", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitTimeout))
	const n = 1 << 20
	var sent [32]byte
	var wg sync.WaitGroup
	wg.Go(func() {
		sent, _, _ = sendHashed(c, 9, n)
		c.CloseWrite()
	})
	got, m, err := recvHashed(c)
	wg.Wait()
	if err != nil || m != n || got != sent {
		t.Fatalf("echo through the expose: %d bytes back (sha256 equal %v), err %v", m, got == sent, err)
	}
	var s proxySeen
	select {
	case s = <-seen:
	case <-time.After(waitTimeout):
		t.Fatal("the target reported nothing")
	}
	if s.err != nil || s.n != n || s.sum != sent {
		t.Fatalf("the target got %d bytes after the header (sha256 equal %v), err %v", s.n, s.sum == sent, s.err)
	}
	if s.src != c.LocalAddr().String() {
		t.Errorf("the PROXY header's source is %s, want the inbound connection's %s", s.src, c.LocalAddr())
	}
	if s.dst != addr {
		t.Errorf("the PROXY header's destination is %s, want the expose's listener %s", s.dst, addr)
	}
}

// TestReversePostgres: PostgreSQL behind the client, psql and pgbench run
// on the server's side through the expose; rows read back through the
// expose and directly are equal, and pgbench, with a connection per
// transaction too, fails no transaction. The same pgbench runs through a
// forward route of the same two processes to the same cluster, for the
// figures side by side.
func TestReversePostgres(t *testing.T) {
	t.Parallel()
	pg := startPostgres(t)
	pk := pkiDir(t)
	srv := exposeServer(t, pk, []string{"fwd=" + pg.addr}, []string{exposeSpec("db", []string{"cn:app1"})})
	cli := startProc(t, append(publisherArgs(pk, srv.addr(t), pk.clientCert, pk.clientKey, "db="+pg.addr), "--forward", "127.0.0.1:0=fwd")...)
	cli.waitEvent(t, waitTimeout, "publish_added", isEvent("publish_added", "expose", "db"))
	via := srv.exposeAddr(t, "db")

	var script, want bytes.Buffer
	script.WriteString("CREATE TABLE items (id int PRIMARY KEY, payload text NOT NULL);\nBEGIN;\n")
	for i := 1; i <= 2000; i++ {
		fmt.Fprintf(&script, "INSERT INTO items VALUES (%d, 'row-%d-%s');\n", i, i, strings.Repeat("y", i%50))
		fmt.Fprintf(&want, "%d|row-%d-%s\n", i, i, strings.Repeat("y", i%50))
	}
	script.WriteString("COMMIT;\n")
	pg.psql(t, via, &script, "-f", "-")
	query := []string{"-A", "-t", "-c", "SELECT id, payload FROM items ORDER BY id"}
	for _, path := range []struct{ name, addr string }{{"expose", via}, {"direct", pg.addr}} {
		if got := pg.psql(t, path.addr, nil, query...); !bytes.Equal(got, want.Bytes()) {
			t.Errorf("rows read back %s: %d bytes, differ from the %d inserted", path.name, len(got), want.Len())
		}
	}
	secs := pgbenchSeconds(t)
	if out, err := pg.cmd(t.Context(), via, "pgbench", "-i", "-s", "1", "-q").CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i through the expose: %v\n%s", err, lastLines(string(out), 20))
	}
	run := []string{"-c", "8", "-j", "2", "-T", secs, "-n"}
	runC := append([]string{"-C"}, run...)
	fwd := cli.forwardAddr(t, "fwd")
	t.Logf("pgbench -c 8 -j 2 -T %s, tps: reverse (through the expose to PostgreSQL behind the publishing client) %.1f, with -C %.1f; forward (the client's forward to the server's route, same processes, same cluster) %.1f, with -C %.1f",
		secs, pg.pgbench(t, "expose", via, run...), pg.pgbench(t, "expose -C", via, runC...), pg.pgbench(t, "forward", fwd, run...), pg.pgbench(t, "forward -C", fwd, runC...))
}

// TestReverseTwoPublishers: two clients publish one name. Inbound
// connections spread across them (fewest streams first); one publisher is
// killed (SIGKILL) while connections keep coming, and new connections go to
// the other at once, none hanging; with neither left, an inbound connection
// is reset at once and /readyz?expose= says the expose is down.
func TestReverseTwoPublishers(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	cert2, key2 := pk.issue(t, "--client", "app2")
	srv := exposeServer(t, pk, nil, []string{exposeSpec("svc", []string{"cn:app1", "cn:app2"})}, "--admin", "127.0.0.1:0")
	a := startPublisher(t, pk, srv, "svc="+idBackend(t, 'A'))
	b := startProc(t, publisherArgs(pk, srv.addr(t), cert2, key2, "svc="+idBackend(t, 'B'))...)
	b.waitEvent(t, waitTimeout, "app2's publish_added", isEvent("publish_added", "expose", "svc"))
	srv.waitEventN(t, waitTimeout, 2, "two publications", isEvent("publish_added", "expose", "svc"))
	addr := srv.exposeAddr(t, "svc")
	admin := "http://" + srv.adminAddr(t) + "/readyz?expose=svc"

	// which returns the publisher that carried a new connection, after an
	// echo through it, or the error that ended it.
	which := func() (byte, error) {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second)) // no connection may hang: this fails one that would
		var id [1]byte
		if _, err := io.ReadFull(c, id[:]); err != nil {
			return 0, err
		}
		msg := []byte("ping through " + string(id[:]))
		if _, err := c.Write(msg); err != nil {
			return 0, err
		}
		back := make([]byte, len(msg))
		if _, err := io.ReadFull(c, back); err != nil || !bytes.Equal(back, msg) {
			return 0, fmt.Errorf("echo: %q, %v", back, err)
		}
		return id[0], nil
	}

	t.Run("spread", func(t *testing.T) {
		count := map[byte]int{}
		for range 20 { // one after another: the least used is picked
			id, err := which()
			if err != nil {
				t.Fatal(err)
			}
			count[id]++
		}
		held := map[byte]int{}
		for id, cs := range heldByPublisher(t, addr, 20) { // all open at once: the one carrying fewer is picked
			held[id] = len(cs)
			for _, c := range cs {
				c.Close()
			}
		}
		t.Logf("20 connections one after another: A %d, B %d; 20 held at once: A %d, B %d", count['A'], count['B'], held['A'], held['B'])
		if count['A'] < 8 || count['B'] < 8 || held['A'] != 10 || held['B'] != 10 {
			t.Errorf("connections not spread: one after another A %d B %d (want about 10 each), held A %d B %d (want 10 each)",
				count['A'], count['B'], held['A'], held['B'])
		}
	})

	t.Run("failover", func(t *testing.T) {
		type result struct {
			start, end time.Time
			id         byte
			err        error
		}
		var (
			mu      sync.Mutex
			results []result
			stop    = make(chan struct{})
			wg      sync.WaitGroup
		)
		for range 4 { // four workers, connections back to back
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					r := result{start: time.Now()}
					r.id, r.err = which()
					r.end = time.Now()
					mu.Lock()
					results = append(results, r)
					mu.Unlock()
				}
			})
		}
		time.Sleep(500 * time.Millisecond) // load before the kill; not synchronisation
		killed := time.Now()
		a.signal(t, syscall.SIGKILL) // our child, by its pid
		srv.waitEvent(t, waitTimeout, "app1's publish_removed", isEvent("publish_removed", "expose", "svc", "identity_cn", "app1"))
		time.Sleep(2 * time.Second) // keep the load on after the kill
		close(stop)
		wg.Wait()

		// The failover time: from the kill to the start of the first
		// connection from which on every one went through B.
		var lastBad time.Time
		var before, after, failedAfter, inFlight, cut int
		var slowest time.Duration
		for _, r := range results {
			slowest = max(slowest, r.end.Sub(r.start))
			if r.start.Before(killed) {
				before++
				if r.end.After(killed) {
					inFlight++
					if r.err != nil {
						cut++
					}
				}
				continue
			}
			after++
			if r.err != nil || r.id != 'B' {
				failedAfter++
				if r.start.After(lastBad) {
					lastBad = r.start
				}
			}
		}
		failover := time.Duration(0)
		if !lastBad.IsZero() {
			failover = lastBad.Sub(killed)
		}
		t.Logf("%d connections began before the kill (%d in flight at it, %d of them cut), %d after: %d of those failed or went to the killed publisher, the last of them started %v after the SIGKILL; the slowest connection took %v",
			before, inFlight, cut, after, failedAfter, failover.Round(time.Millisecond), slowest.Round(time.Millisecond))
		if after < 20 {
			t.Fatalf("only %d connections after the kill: the load stalled", after)
		}
		if failover > 5*time.Second { // the issue asks within a second; the margin is for a busy machine
			t.Errorf("new connections still failed or went to the killed publisher %v after the kill", failover)
		}
		if slowest > 10*time.Second {
			t.Errorf("a connection took %v: one hung", slowest)
		}
	})

	t.Run("none left", func(t *testing.T) {
		if code := httpStatus(t, admin); code != http.StatusOK {
			t.Errorf("/readyz?expose=svc with app2 publishing: %d, want 200", code)
		}
		b.signal(t, syscall.SIGTERM)
		b.wait(t, waitTimeout)
		srv.waitEvent(t, waitTimeout, "app2's publish_removed", isEvent("publish_removed", "expose", "svc", "identity_cn", "app2"))
		d := expectReset(t, "127.0.0.1", addr, nil)
		t.Logf("with no publisher, an inbound connection was reset %v after its dial began", d.Round(time.Microsecond))
		srv.waitEvent(t, waitTimeout, "conn_rejected no_publisher", isEvent("conn_rejected", "component", "expose", "reason", "no_publisher"))
		if code := httpStatus(t, admin); code != http.StatusServiceUnavailable {
			t.Errorf("/readyz?expose=svc with no publisher: %d, want 503", code)
		}
	})
}

// httpStatus GETs url and returns the status code.
func httpStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestReversePublisherRefused: a client whose identity is not among the
// expose's publishers, or that publishes a name the server does not
// expose, is refused with a status and a log line on both sides; the
// expose stays down and its inbound connections are reset.
func TestReversePublisherRefused(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	echo := echoBackend(t)
	srv := exposeServer(t, pk, nil, []string{exposeSpec("svc", []string{"cn:app2"})})
	cli := startProc(t, publisherArgs(pk, srv.addr(t), pk.clientCert, pk.clientKey, "svc="+echo, "nope="+echo)...)

	ev := cli.waitEvent(t, waitTimeout, "publish_refused svc", isEvent("publish_refused", "expose", "svc"))
	if ev["status"] != "forbidden" || ev["reason"] != "not_a_publisher" {
		t.Errorf("client's publish_refused of svc: status %v reason %v, want forbidden, not_a_publisher", ev["status"], ev["reason"])
	}
	ev = srv.waitEvent(t, waitTimeout, "server's publish_refused svc", isEvent("publish_refused", "expose", "svc"))
	if ev["identity_cn"] != "app1" || ev["reason"] != "identity_not_allowed" || ev["rule_set"] != "exposes.svc.publishers" {
		t.Errorf("server's publish_refused: %v; want identity app1, reason identity_not_allowed, rule_set exposes.svc.publishers", ev)
	}
	ev = cli.waitEvent(t, waitTimeout, "publish_refused nope", isEvent("publish_refused", "expose", "nope"))
	if ev["status"] != "unknown_route" {
		t.Errorf("client's publish_refused of nope: status %v, want unknown_route", ev["status"])
	}
	if n := len(srv.matching(isEvent("publish_added"))); n != 0 {
		t.Fatalf("the server logged %d publish_added", n)
	}
	expectReset(t, "127.0.0.1", srv.exposeAddr(t, "svc"), []byte("hello"))
	srv.waitEvent(t, waitTimeout, "conn_rejected no_publisher", isEvent("conn_rejected", "component", "expose", "reason", "no_publisher"))
}

// TestReverseInboundNotAllowed: an inbound connection from an address not
// on the expose's allowlist is reset in Accept, before any byte is read,
// and never reaches the publisher, even though the main listener allows
// that address; an allowed address gets through.
func TestReverseInboundNotAllowed(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	var hits int
	var mu sync.Mutex
	backend := startBackend(t, func(c *net.TCPConn) {
		mu.Lock()
		hits++
		mu.Unlock()
		io.Copy(c, c)
	})
	args := append(serverArgs(pk, "127.0.0.1:0"), "--allow", "127.0.0.2/32",
		"--expose", "127.0.0.1:0=svc,allow=127.0.0.2/32,publisher=cn:app1")
	srv := startProc(t, args...)
	startPublisher(t, pk, srv, "svc="+backend)
	addr := srv.exposeAddr(t, "svc")

	expectReset(t, "127.0.0.1", addr, []byte("GET / HTTP/1.0\r\n\r\n"))
	ev := srv.waitEvent(t, waitTimeout, "expose conn_rejected", isEvent("conn_rejected", "component", "expose", "reason", "ip_not_allowed"))
	if host, _, _ := net.SplitHostPort(fmt.Sprint(ev["addr"])); host != "127.0.0.1" || ev["expose"] != "svc" {
		t.Errorf("conn_rejected: %v, want addr 127.0.0.1:PORT, expose svc", ev)
	}

	ok, err := dialFrom("127.0.0.2", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ok.Close()
	ok.SetDeadline(time.Now().Add(waitTimeout))
	ok.Write([]byte("hi"))
	if _, err := io.ReadFull(ok, make([]byte, 2)); err != nil {
		t.Fatalf("a connection from 127.0.0.2: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if hits != 1 {
		t.Errorf("the published service saw %d connections, want 1 (the allowed one)", hits)
	}
	if n := len(srv.matching(isEvent("stream_closed", "direction", "reverse"))); n > 1 {
		t.Errorf("%d reverse streams; the refused connection must not get one", n)
	}
}
