package admin_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/tunnel-dev/tunnel/admin"
	"github.com/tunnel-dev/tunnel/trust"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve serves h on a loopback listener for the test and returns its URL.
func serve(t *testing.T, h *admin.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(func() { srv.Close(); h.Close() })
	return srv.URL
}

// do sends one request with the given headers ("Host" sets the Host) and
// returns the status and body.
func do(t *testing.T, method, url string, hdr ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader("x=1"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestHandler(t *testing.T) {
	defer http.DefaultClient.CloseIdleConnections()
	var ready atomic.Bool
	var reloads, refreshes atomic.Int32
	rc := trust.NewRevocationChecker(trust.DefaultRevocationPolicy(), trust.NewStore(nil), nil)
	defer rc.Close()
	h, err := admin.NewHandler(admin.Config{
		Ready: func() error {
			if !ready.Load() {
				return errors.New("no session")
			}
			return nil
		},
		Reload:      func() { reloads.Add(1) },
		RefreshCRLs: func() { refreshes.Add(1) },
		Collectors:  []prometheus.Collector{admin.RevocationCollector(rc)},
	})
	if err != nil {
		t.Fatal(err)
	}
	u := serve(t, h)
	if code, body := do(t, "GET", u+"/healthz"); code != 200 || !strings.Contains(body, "ok") {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := do(t, "GET", u+"/readyz"); code != 503 || !strings.Contains(body, "no session") {
		t.Errorf("/readyz while not ready: %d %q", code, body)
	}
	ready.Store(true)
	if code, _ := do(t, "GET", u+"/readyz"); code != 200 {
		t.Errorf("/readyz when ready: %d", code)
	}
	for _, m := range []string{"GET", "PUT", "DELETE", "PATCH"} {
		if code, _ := do(t, m, u+"/reload"); code != http.StatusMethodNotAllowed {
			t.Errorf("%s /reload: %d, want 405", m, code)
		}
		if code, _ := do(t, m, u+"/crl/refresh"); code != http.StatusMethodNotAllowed {
			t.Errorf("%s /crl/refresh: %d, want 405", m, code)
		}
	}
	if reloads.Load() != 0 || refreshes.Load() != 0 {
		t.Errorf("non-POST requests ran %d reloads and %d refreshes", reloads.Load(), refreshes.Load())
	}
	if code, _ := do(t, "POST", u+"/reload"); code != http.StatusAccepted || reloads.Load() != 1 {
		t.Errorf("POST /reload: %d, %d reloads", code, reloads.Load())
	}
	if code, _ := do(t, "POST", u+"/crl/refresh"); code != http.StatusAccepted || refreshes.Load() != 1 {
		t.Errorf("POST /crl/refresh: %d, %d refreshes", code, refreshes.Load())
	}
	code, body := do(t, "GET", u+"/metrics")
	for _, want := range []string{"tunnel_revocation_checks_total 0", `tunnel_crl_fetches_total{result="ok"} 0`, "go_goroutines", "process_"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics (%d) lacks %q", code, want)
		}
	}
}

// TestHandlerRefusesBrowsers: what a web page can make a browser send,
// a cross-origin simple POST or a DNS-rebound Host, gets 403 and runs
// nothing; what curl and Prometheus send passes.
func TestHandlerRefusesBrowsers(t *testing.T) {
	defer http.DefaultClient.CloseIdleConnections()
	var reloads atomic.Int32
	h, err := admin.NewHandler(admin.Config{Reload: func() { reloads.Add(1) }, Spacing: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	u := serve(t, h)
	hostport := strings.TrimPrefix(u, "http://")
	_, port, _ := net.SplitHostPort(hostport)
	for _, tt := range []struct {
		name   string
		method string
		path   string
		hdr    []string
		want   int
	}{
		{"curl", "POST", "/reload", nil, 202},
		{"Host localhost", "POST", "/reload", []string{"Host", "localhost:" + port}, 202},
		{"Host [::1]", "GET", "/metrics", []string{"Host", "[::1]:" + port}, 200},
		{"Host 127.0.0.2", "GET", "/metrics", []string{"Host", "127.0.0.2:" + port}, 200},
		{"same origin", "POST", "/reload", []string{"Origin", u, "Sec-Fetch-Site", "same-origin"}, 202},
		{"rebound name", "GET", "/metrics", []string{"Host", "attacker.example:" + port}, 403},
		{"rebound name, reload", "POST", "/reload", []string{"Host", "attacker.example:" + port}, 403},
		{"rebound name without port", "GET", "/metrics", []string{"Host", "attacker.example"}, 403},
		{"localhost. is a DNS name", "GET", "/metrics", []string{"Host", "localhost.:" + port}, 403},
		{"other port", "GET", "/metrics", []string{"Host", "127.0.0.1:1"}, 403},
		{"cross-origin text/plain", "POST", "/reload", []string{"Origin", "http://attacker.example", "Content-Type", "text/plain"}, 403},
		{"cross-origin form", "POST", "/reload", []string{"Origin", "https://attacker.example", "Content-Type", "application/x-www-form-urlencoded"}, 403},
		{"null origin", "POST", "/reload", []string{"Origin", "null"}, 403},
		{"origin on another port", "POST", "/reload", []string{"Origin", "http://127.0.0.1:1"}, 403},
		{"https origin", "POST", "/reload", []string{"Origin", "https://" + hostport}, 403},
		{"cross-site fetch without Origin", "GET", "/metrics", []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"same-site fetch", "GET", "/metrics", []string{"Sec-Fetch-Site", "same-site"}, 403},
	} {
		before := reloads.Load()
		if code, body := do(t, tt.method, u+tt.path, tt.hdr...); code != tt.want {
			t.Errorf("%s: %d %q, want %d", tt.name, code, body, tt.want)
		}
		if ran := reloads.Load() - before; tt.want == 403 && ran != 0 {
			t.Errorf("%s: refused but ran %d reloads", tt.name, ran)
		}
	}
}

// TestHandlerToken: with a token, every endpoint but the probes wants it,
// and it lets a request through whatever its Host (a remote Prometheus
// scraping by name).
func TestHandlerToken(t *testing.T) {
	defer http.DefaultClient.CloseIdleConnections()
	token := []byte("s3cret-token-0123456789")
	var reloads atomic.Int32
	h, err := admin.NewHandler(admin.Config{Reload: func() { reloads.Add(1) }, Token: func() []byte { return token }})
	if err != nil {
		t.Fatal(err)
	}
	u := serve(t, h)
	bearer := "Bearer " + string(token)
	for _, tt := range []struct {
		name         string
		method, path string
		hdr          []string
		want         int
	}{
		{"probe without token", "GET", "/healthz", nil, 200},
		{"readiness without token", "GET", "/readyz", nil, 200},
		{"metrics without token", "GET", "/metrics", nil, 401},
		{"reload without token", "POST", "/reload", nil, 401},
		{"wrong token", "GET", "/metrics", []string{"Authorization", "Bearer s3cret-token-0123456788"}, 401},
		{"prefix of the token", "GET", "/metrics", []string{"Authorization", "Bearer s3cret"}, 401},
		{"basic auth", "GET", "/metrics", []string{"Authorization", "Basic " + string(token)}, 401},
		{"metrics", "GET", "/metrics", []string{"Authorization", bearer}, 200},
		{"scheme in lower case", "GET", "/metrics", []string{"Authorization", "bearer " + string(token)}, 200},
		{"by name, with the token", "GET", "/metrics", []string{"Authorization", bearer, "Host", "tunnel1.corp.example:9090"}, 200},
		{"by name, without", "GET", "/metrics", []string{"Host", "tunnel1.corp.example:9090"}, 403},
		{"cross-origin, with the token", "POST", "/reload", []string{"Authorization", bearer, "Origin", "http://attacker.example"}, 403},
		{"reload", "POST", "/reload", []string{"Authorization", bearer}, 202},
	} {
		if code, body := do(t, tt.method, u+tt.path, tt.hdr...); code != tt.want {
			t.Errorf("%s: %d %q, want %d", tt.name, code, body, tt.want)
		}
	}
	if reloads.Load() != 1 {
		t.Errorf("%d reloads, want 1 (only the authorised request)", reloads.Load())
	}
}

// TestHandlerCoalesces: a burst of concurrent reload requests runs one
// reload at once and one more at the end of the spacing, never one per
// request; a request after a quiet spell runs at once.
func TestHandlerCoalesces(t *testing.T) {
	defer http.DefaultClient.CloseIdleConnections()
	var runs atomic.Int32
	spacing := 300 * time.Millisecond
	h, err := admin.NewHandler(admin.Config{Reload: func() { runs.Add(1) }, Spacing: spacing})
	if err != nil {
		t.Fatal(err)
	}
	u := serve(t, h)
	var wg sync.WaitGroup
	start := time.Now()
	for range 8 {
		wg.Go(func() {
			for range 25 {
				if code, _ := do(t, "POST", u+"/reload"); code != 202 {
					t.Errorf("POST /reload: %d", code)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	// The last coalesced run starts at most one spacing after the last
	// request; a spacing after that run the listener is quiet again.
	time.Sleep(2 * spacing)
	max := int32(elapsed/spacing) + 2
	if n := runs.Load(); n < 2 || n > max {
		t.Errorf("200 requests in %v ran %d reloads, want 2 to %d", elapsed, n, max)
	}
	t.Logf("200 concurrent POST /reload in %v: %d reloads", elapsed.Round(time.Millisecond), runs.Load())
	before := runs.Load()
	do(t, "POST", u+"/reload")
	if runs.Load() != before+1 {
		t.Error("a request after a quiet spell did not run at once")
	}
}

func TestLoadToken(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "token")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if tok, err := admin.LoadToken(write("  0123456789abcdef-xyz\n")); err != nil || string(tok) != "0123456789abcdef-xyz" {
		t.Errorf("LoadToken = %q, %v", tok, err)
	}
	for _, bad := range []string{"", "short", "0123456789 abcdef", "0123456789abcdef\nsecond-line", strings.Repeat("a", 5000), "0123456789abcdefé"} {
		if tok, err := admin.LoadToken(write(bad)); err == nil {
			t.Errorf("LoadToken(%q) = %q, want an error", bad, tok)
		} else if len(bad) > 5 && strings.Contains(err.Error(), bad) {
			t.Errorf("the error shows the token: %v", err)
		}
	}
	if _, err := admin.LoadToken(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestCheckAddr(t *testing.T) {
	for _, tt := range []struct {
		addr   string
		remote bool
		ok     bool
	}{
		{"127.0.0.1:9090", false, true}, {"[::1]:9090", false, true}, {"localhost:9090", false, true},
		{"127.0.0.2:0", false, true}, {"0.0.0.0:9090", false, false}, {":9090", false, false},
		{"10.0.0.1:9090", false, false}, {"[::]:9090", false, false}, {"0.0.0.0:9090", true, true},
		{":9090", true, true}, {"example.com:9090", true, false}, {"127.0.0.1", false, false},
		{"127.0.0.1:http-x", false, false},
	} {
		err := admin.CheckAddr(tt.addr, tt.remote)
		if (err == nil) != tt.ok {
			t.Errorf("CheckAddr(%q, %v) = %v, want ok=%v", tt.addr, tt.remote, err, tt.ok)
		}
	}
}

func TestServeStopsWithContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h, err := admin.NewHandler(admin.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- admin.Serve(ctx, ln, h) }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

// A Token re-read from its file changes only when its reload is applied; a
// bad file changes nothing.
func TestTokenReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte("first-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tok, err := admin.NewToken(path)
	if err != nil || string(tok.Get()) != "first-token-0123456789" {
		t.Fatalf("NewToken = %q, %v", tok.Get(), err)
	}
	if err := os.WriteFile(path, []byte("second-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	apply, err := tok.Reload()
	if err != nil || string(tok.Get()) != "first-token-0123456789" {
		t.Fatalf("Reload = %v; token %q before apply", err, tok.Get())
	}
	apply()
	if string(tok.Get()) != "second-token-0123456789" {
		t.Fatalf("after apply: %q", tok.Get())
	}
	if err := os.WriteFile(path, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.Reload(); err == nil || string(tok.Get()) != "second-token-0123456789" {
		t.Fatalf("Reload of a bad file = %v, token %q", err, tok.Get())
	}
	if none, err := admin.NewToken(""); err != nil || none.Get() != nil || none.Path() != "" {
		t.Fatalf("NewToken(\"\") = %v, %v", none, err)
	}
}
