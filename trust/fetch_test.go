package trust_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/trust"
)

// countingListener accepts and counts connections on addr until the test ends.
func countingListener(t *testing.T, network, addr string) (net.Listener, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, nil
	}
	var n atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln, &n
}

func TestFetcherRefusesHostileURLs(t *testing.T) {
	ln4, hits4 := countingListener(t, "tcp4", "127.0.0.1:0")
	port := fmt.Sprint(ln4.Addr().(*net.TCPAddr).Port)
	// The same port on ::1, if this machine has IPv6 loopback.
	_, hits6 := countingListener(t, "tcp6", "[::1]:"+port)
	p := func(s string) string { return strings.ReplaceAll(s, "PORT", port) }
	hostile := []string{
		// schemes
		"file:///etc/passwd", p("ftp://127.0.0.1:PORT/crl"), p("gopher://127.0.0.1:PORT/"),
		"ldap://127.0.0.1/cn=crl", "data:application/pkix-crl;base64,AA==", "javascript:alert(1)",
		"http:crl.example.com/x.crl", "//crl.example.com/x.crl", "",
		// loopback, canonical and named
		p("http://127.0.0.1:PORT/crl"), p("http://localhost:PORT/crl"), p("HTTP://LOCALHOST:PORT/crl"),
		p("http://127.0.0.2:PORT/"), p("http://[::1]:PORT/"),
		// obfuscated IPv4 literals
		p("http://0x7f.1:PORT/"), p("http://2130706433:PORT/"), p("http://017700000001:PORT/"),
		p("http://0177.0.0.1:PORT/"), p("http://127.1:PORT/"), p("http://127.0.1:PORT/"),
		p("http://0x7f000001:PORT/"), p("http://0x7f.0x0.0x0.0x1:PORT/"), p("http://127.0.0.1.:PORT/"),
		p("http://0:PORT/"), p("http://%31%32%37.0.0.1:PORT/"), p("http://127%2e0.0.1:PORT/"),
		// IPv6 forms of IPv4 and special ranges
		p("http://[::ffff:127.0.0.1]:PORT/"), p("http://[::ffff:7f00:1]:PORT/"), p("http://[::127.0.0.1]:PORT/"),
		"https://[::ffff:169.254.169.254]/", "http://[fd00:ec2::254]/latest/meta-data/",
		"http://[fe80::1]/", "http://[fe80::1%25eth0]/", "http://[fc00::1]/", "http://[ff02::1]/", "http://[::]/",
		// private, link-local, metadata, multicast, broadcast, unspecified, CGNAT
		"http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/crl", "http://172.16.0.1/crl",
		"http://192.168.1.1/crl", p("http://0.0.0.0:PORT/"), "http://255.255.255.255/", "http://224.0.0.1/",
		"http://100.64.0.1/",
		// userinfo and other tricks
		p("http://evil@127.0.0.1:PORT/"), "http://evil@crl.example.com/", "http://user:pass@crl.example.com/",
		p("http://crl.example.com%2f@127.0.0.1:PORT/"), p("http://127.0.0.1:PORT@crl.example.com/"),
		"http://crl.example.com:0/", "http://crl.example.com:99999/", "http://crl.example.com:/x",
		"http://crl example.com/", "http://crl.example.com/\x00", "http://crl.exämple.com/", "http://localhost./",
		"http://" + strings.Repeat("a", 2050) + ".example.com/",
	}
	if len(hostile) < 40 {
		t.Fatalf("only %d hostile URLs", len(hostile))
	}
	f := trust.NewCRLFetcher(trust.DefaultFetchOptions()) // no test allowance
	defer f.Close()
	for _, u := range hostile {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := f.Fetch(ctx, u)
		cancel()
		if !errors.Is(err, trust.ErrURLRefused) {
			t.Errorf("%.80q: err = %v, want ErrURLRefused", u, err)
		}
	}
	if n := hits4.Load(); n != 0 {
		t.Errorf("%d connections reached 127.0.0.1:%s", n, port)
	}
	if hits6 != nil && hits6.Load() != 0 {
		t.Errorf("%d connections reached [::1]:%s", hits6.Load(), port)
	}
}

func TestCheckCRLURLAccepts(t *testing.T) {
	for _, u := range []string{
		"http://crl.example.com/ca.crl", "https://pki.example.com:8443/x/y.crl?v=1",
		"http://93.184.216.34/ca.crl", "http://[2606:2800:220:1:248:1893:25c8:1946]/ca.crl",
		"http://c_r-l.example.com/x",
	} {
		if _, err := trust.CheckCRLURL(u, true); err != nil {
			t.Errorf("%q refused: %v", u, err)
		}
	}
	if _, err := trust.CheckCRLURL("http://crl.example.com/x", false); !errors.Is(err, trust.ErrURLRefused) {
		t.Errorf("plain http with allowHTTP=false: %v", err)
	}
}

func TestFetcherNoRedirects(t *testing.T) {
	allowLoopback(t)
	var targetHits atomic.Int64
	target := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { targetHits.Add(1) }))
	defer target.Close()
	redirector := httptest.NewServer(http.RedirectHandler(target.URL+"/crl", http.StatusFound))
	defer redirector.Close()
	f := trust.NewCRLFetcher(trust.DefaultFetchOptions())
	defer f.Close()
	_, err := f.Fetch(context.Background(), redirector.URL+"/crl")
	if !errors.Is(err, trust.ErrURLRefused) || !strings.Contains(err.Error(), "redirect") {
		t.Errorf("err = %v, want a refused redirect", err)
	}
	if targetHits.Load() != 0 {
		t.Error("the redirect target was requested")
	}
}

func TestFetcherBodyCap(t *testing.T) {
	allowLoopback(t)
	const limit = 64 << 10
	for _, tt := range []struct {
		name          string
		contentLength bool
	}{{"declared", true}, {"streamed", false}} {
		t.Run(tt.name, func(t *testing.T) {
			var written atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.contentLength {
					w.Header().Set("Content-Length", fmt.Sprint(16*limit))
				}
				chunk := make([]byte, 4096)
				for range 16 * limit / len(chunk) {
					n, err := w.Write(chunk)
					written.Add(int64(n))
					if err != nil {
						return
					}
					w.(http.Flusher).Flush()
				}
			}))
			defer srv.Close()
			opts := trust.DefaultFetchOptions()
			opts.MaxBytes = limit
			f := trust.NewCRLFetcher(opts)
			defer f.Close()
			body, err := f.Fetch(context.Background(), srv.URL+"/big.crl")
			if err == nil || !strings.Contains(err.Error(), "exceeds") {
				t.Fatalf("err = %v, body %d bytes; want the cap to abort", err, len(body))
			}
		})
	}
}

func TestFetcherTimeout(t *testing.T) {
	allowLoopback(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c // hold it open, never answer
		}
	}()
	defer func() {
		ln.Close()
		select {
		case c := <-accepted:
			c.Close()
		default:
		}
	}()
	opts := trust.DefaultFetchOptions()
	opts.Timeout = 300 * time.Millisecond
	f := trust.NewCRLFetcher(opts)
	defer f.Close()
	start := time.Now()
	_, err = f.Fetch(context.Background(), "http://"+ln.Addr().String()+"/crl")
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("a server that never answers did not fail the fetch")
	}
	if elapsed > 5*time.Second {
		t.Errorf("fetch gave up after %v with a 300 ms timeout", elapsed)
	}
	t.Logf("gave up after %v: %v", elapsed.Round(time.Millisecond), err)
}

func TestCRLStoreCaps(t *testing.T) {
	ca := newCA(t, "Caps CA")
	// ldap is not fetched and the hostile URL is refused: both give no
	// CRL, and neither counts towards the rate of new URLs.
	cdps := []string{"ldap://ldap.example/cn=crl", "http://0x7f.1/ca.crl"}
	for i := range 70 {
		cdps = append(cdps, fmt.Sprintf("http://h%d.crl.example/ca.crl", i))
	}
	leaf := newLeaf(t, ca, "caps", x509.ExtKeyUsageClientAuth, func(c *x509.Certificate) { c.CRLDistributionPoints = cdps })
	now := time.Now()
	// Not started: nothing is fetched, only tracked.
	s := trust.NewCRLStore(trust.CRLStoreConfig{Fetcher: trust.NewCRLFetcher(trust.DefaultFetchOptions()), Now: func() time.Time { return now }})
	defer s.Close()
	got, unusable := s.Discover(leaf.cert, ca.cert)
	st := s.Stats()
	if len(got) != 60 || st.Tracked != 60 || st.URLsRefused != 1 {
		t.Errorf("tracked %d (returned %d), refused %d; want 60 and 1 under the 60-per-minute cap", st.Tracked, len(got), st.URLsRefused)
	}
	if st.LimitHits[trust.LimitFetchRate] != 10 {
		t.Errorf("rate cap hits = %d, want 10", st.LimitHits[trust.LimitFetchRate])
	}
	reasons := map[string]int{}
	for _, u := range unusable {
		reasons[u.Reason]++
	}
	if want := map[string]int{trust.ReasonSchemeNotFetched: 1, trust.ReasonURLRefused: 1, "limit_" + trust.LimitFetchRate: 10}; !maps.Equal(reasons, want) {
		t.Errorf("unusable Distribution Points by reason = %v, want %v", reasons, want)
	}
	// Known URLs are returned again without counting as new.
	if again, _ := s.Discover(leaf.cert, ca.cert); len(again) != 60 {
		t.Errorf("second Discover returned %d URLs", len(again))
	}
	// A minute later the window has moved on: the ten dropped ones get in.
	now = now.Add(time.Minute)
	if later, unusable := s.Discover(leaf.cert, ca.cert); len(later) != 70 || len(unusable) != 2 {
		t.Errorf("a minute later: %d tracked, %d unusable; want 70 and 2", len(later), len(unusable))
	}
}

// TestCRLStoreEvictsLeastRecentlyUsed: a full store makes room for a new
// URL by forgetting the one used longest ago, never a CA bundle's, so a
// filled cap never stops tracking new Distribution Points.
func TestCRLStoreEvictsLeastRecentlyUsed(t *testing.T) {
	ca := newCA(t, "LRU CA")
	cert := func(urls ...string) *x509.Certificate {
		return newLeaf(t, ca, "lru", x509.ExtKeyUsageClientAuth, func(c *x509.Certificate) { c.CRLDistributionPoints = urls }).cert
	}
	now := time.Now()
	s := trust.NewCRLStore(trust.CRLStoreConfig{Fetcher: trust.NewCRLFetcher(trust.DefaultFetchOptions()),
		Limits: trust.CRLStoreLimits{TrackedURLs: 3, RefusedURLs: 2}, Now: func() time.Time { return now }})
	defer s.Close()
	tick := func() { now = now.Add(time.Second) }
	a, b, c, d := cert("http://a.example/1.crl"), cert("http://b.example/1.crl"), cert("http://c.example/1.crl"), cert("http://d.example/1.crl")
	for _, x := range []*x509.Certificate{a, b, c} {
		if got, _ := s.Discover(x, ca.cert); len(got) != 1 {
			t.Fatalf("Discover(%v) = %v", x.CRLDistributionPoints, got)
		}
		tick()
	}
	s.Discover(a, ca.cert) // a is used again: b is now the oldest
	tick()
	if got, un := s.Discover(d, ca.cert); len(got) != 1 || len(un) != 0 {
		t.Fatalf("a new URL in a full store: tracked %v, unusable %v; want it tracked", got, un)
	}
	if st := s.Stats(); st.Tracked != 3 || st.LimitHits[trust.LimitCached] != 1 {
		t.Errorf("after one eviction: %d tracked, %d cached_crls hits; want 3 and 1", st.Tracked, st.LimitHits[trust.LimitCached])
	}
	// b was evicted: it comes back as a new URL, evicting c.
	tick()
	if got, _ := s.Discover(b, ca.cert); len(got) != 1 {
		t.Errorf("the evicted URL is not tracked again: %v", got)
	}
	if st := s.Stats(); st.LimitHits[trust.LimitCached] != 2 {
		t.Errorf("cached_crls hits = %d, want 2", st.LimitHits[trust.LimitCached])
	}
	// Refused URLs are remembered in a table of their own, which forgets
	// its oldest entry too; each comes back refused, never silently passed.
	for i := range 5 {
		u := fmt.Sprintf("ldap://l%d.example/cn=crl", i)
		if _, un := s.Discover(cert(u), ca.cert); len(un) != 1 || un[0].Reason != trust.ReasonSchemeNotFetched {
			t.Fatalf("%s: unusable %v", u, un)
		}
	}
	if _, un := s.Discover(cert("ldap://l0.example/cn=crl"), ca.cert); len(un) != 1 || un[0].Reason != trust.ReasonSchemeNotFetched {
		t.Errorf("a forgotten refused URL: %v, want refused again", un)
	}
	if st := s.Stats(); st.LimitHits[trust.LimitSeenURLs] < 3 {
		t.Errorf("seen_urls hits = %d, want at least 3", st.LimitHits[trust.LimitSeenURLs])
	}
}

// TestFetcherIPLiterals: an IP literal the SSRF guard allows is dialled; a
// private, loopback or metadata one is refused before any dial. The dialer
// is a stub that records and refuses, so nothing leaves the machine.
func TestFetcherIPLiterals(t *testing.T) {
	var dialled []string
	var mu sync.Mutex
	stub := func(_ context.Context, network, address string) (net.Conn, error) {
		mu.Lock()
		dialled = append(dialled, address)
		mu.Unlock()
		return nil, errors.New("stub dialer: nothing is sent")
	}
	f := trust.NewCRLFetcherDialer(trust.DefaultFetchOptions(), stub)
	defer f.Close()
	for _, tt := range []struct {
		url  string
		dial string // "" if it must be refused before dialling
	}{
		{"http://8.8.8.8/ca.crl", "8.8.8.8:80"},
		{"https://1.1.1.1/ca.crl", "1.1.1.1:443"},
		{"http://9.9.9.9:8080/ca.crl", "9.9.9.9:8080"},
		{"http://[2606:4700:4700::1111]/ca.crl", "[2606:4700:4700::1111]:80"},
		{"http://10.0.0.1/ca.crl", ""},
		{"http://192.168.1.1/ca.crl", ""},
		{"http://127.0.0.1/ca.crl", ""},
		{"http://169.254.169.254/latest/meta-data", ""},
		{"http://100.64.0.1/ca.crl", ""},
		{"http://[fd00::1]/ca.crl", ""},
		{"http://[::ffff:10.0.0.1]/ca.crl", ""},
		{"http://203.0.113.7/ca.crl", ""}, // documentation range: the guard refuses it
	} {
		mu.Lock()
		dialled = nil
		mu.Unlock()
		_, err := f.Fetch(context.Background(), tt.url)
		mu.Lock()
		got := slices.Clone(dialled)
		mu.Unlock()
		switch {
		case err == nil:
			t.Errorf("%s: fetched through a dialer that always fails", tt.url)
		case tt.dial == "" && (len(got) > 0 || !errors.Is(err, trust.ErrURLRefused)):
			t.Errorf("%s: dialled %v, error %v; want refused before any dial", tt.url, got, err)
		case tt.dial != "" && (errors.Is(err, trust.ErrURLRefused) || !slices.Contains(got, tt.dial)):
			t.Errorf("%s: dialled %v, error %v; want a dial of %s", tt.url, got, err, tt.dial)
		}
	}
}

// FuzzCheckCRLURL: no input panics, and an accepted URL is http(s), has a
// host and no userinfo, and any IPv4 literal in it is canonical.
func FuzzCheckCRLURL(f *testing.F) {
	for _, s := range []string{"http://crl.example.com/ca.crl", "http://0x7f.1/", "http://[::ffff:127.0.0.1]/",
		"http://evil@host/", "https://1.2.3.4:8443/x", "http://2130706433/", "file:///etc/passwd"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := trust.CheckCRLURL(raw, true)
		if err != nil {
			return
		}
		if u.Scheme != "http" && u.Scheme != "https" || u.User != nil || u.Hostname() == "" || len(raw) > trust.MaxCRLURLLen {
			t.Fatalf("accepted %q: %+v", raw, u)
		}
		if ip := net.ParseIP(u.Hostname()); ip != nil && ip.To4() != nil && !strings.Contains(u.Host, "[") && ip.String() != u.Hostname() {
			t.Fatalf("accepted a non-canonical IPv4 literal %q", raw)
		}
	})
}
