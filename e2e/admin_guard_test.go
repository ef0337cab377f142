package e2e

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// adminReq sends one request with a body and headers ("Host" sets the
// Host) and returns the status.
func adminReq(t *testing.T, method, url, body string, hdr ...string) int {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
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
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	c.CloseIdleConnections()
	return resp.StatusCode
}

// TestAdminRefusesBrowsers: what a web page can make a browser send to a
// loopback admin listener, a cross-origin simple POST or a DNS-rebound
// Host, is refused with 403 and reloads nothing; the endpoints that change
// state take POST only.
func TestAdminRefusesBrowsers(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	srv := startProc(t, append(serverArgs(pk, "127.0.0.1:0", "echo="+echoBackend(t)), "--admin", "127.0.0.1:0")...)
	hostport := srv.adminAddr(t)
	u := "http://" + hostport
	_, port, _ := strings.Cut(hostport, ":")
	for _, tt := range []struct {
		name, method, path, body string
		hdr                      []string
		want                     int
	}{
		{"cross-origin text/plain reload", "POST", "/reload", "x", []string{"Origin", "http://attacker.example", "Content-Type", "text/plain"}, 403},
		{"cross-origin form CRL refresh", "POST", "/crl/refresh", "a=b", []string{"Origin", "http://attacker.example", "Content-Type", "application/x-www-form-urlencoded"}, 403},
		{"null origin", "POST", "/reload", "", []string{"Origin", "null"}, 403},
		{"cross-site fetch", "POST", "/reload", "", []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"rebound Host, metrics", "GET", "/metrics", "", []string{"Host", "attacker.example:" + port}, 403},
		{"rebound Host, reload", "POST", "/reload", "", []string{"Host", "attacker.example:" + port}, 403},
		{"GET /reload", "GET", "/reload", "", nil, 405},
		{"PUT /crl/refresh", "PUT", "/crl/refresh", "", nil, 405},
		{"metrics by localhost", "GET", "/metrics", "", []string{"Host", "localhost:" + port}, 200},
		{"same-origin page", "GET", "/metrics", "", []string{"Origin", u, "Sec-Fetch-Site", "same-origin"}, 200},
	} {
		if code := adminReq(t, tt.method, u+tt.path, tt.body, tt.hdr...); code != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, code, tt.want)
		}
	}
	srv.waitEvent(t, waitTimeout, "admin_refused", isEvent("admin_refused"))
	if n := len(srv.matching(isEvent("reload_applied"))); n != 0 {
		t.Errorf("%d reloads after refused requests", n)
	}
	if code := adminReq(t, "POST", u+"/reload", ""); code != 202 {
		t.Errorf("curl-style POST /reload: %d", code)
	}
	srv.waitEvent(t, waitTimeout, "reload_applied", isEvent("reload_applied"))
}

// TestAdminReloadFlood: 3000 concurrent POST /reload run a handful of
// reloads, not one each.
func TestAdminReloadFlood(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	srv := startProc(t, append(serverArgs(pk, "127.0.0.1:0", "echo="+echoBackend(t)), "--admin", "127.0.0.1:0")...)
	u := "http://" + srv.adminAddr(t) + "/reload"
	var wg sync.WaitGroup
	var accepted atomic.Int64
	start := time.Now()
	for range 15 {
		wg.Go(func() {
			c := &http.Client{Timeout: 10 * time.Second}
			defer c.CloseIdleConnections()
			for range 200 {
				resp, err := c.Post(u, "text/plain", nil)
				if err != nil {
					t.Errorf("POST /reload: %v", err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 202 {
					accepted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	srv.waitEvent(t, waitTimeout, "reload_applied", isEvent("reload_applied"))
	// A coalesced run starts at most a second after the last request; wait
	// that out (and its reload), so every run is counted.
	time.Sleep(2 * time.Second)
	n := len(srv.matching(isEvent("reload_applied")))
	limit := int(elapsed/time.Second) + 2
	t.Logf("%d POST /reload accepted in %v ran %d reloads (at most one a second: limit %d)", accepted.Load(), elapsed.Round(time.Millisecond), n, limit)
	if accepted.Load() != 3000 || n < 1 || n > limit {
		t.Errorf("%d accepted, %d reloads; want all accepted and 1 to %d reloads", accepted.Load(), n, limit)
	}
}

// TestAdminRemoteNeedsToken: --admin-allow-remote without a token file is
// a configuration error; with one, every endpoint but the probes wants the
// token, the token lets a scrape by host name through, and a new token in
// the file takes over at the reload it triggers.
func TestAdminRemoteNeedsToken(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	args := append(serverArgs(pk, "127.0.0.1:0", "echo=127.0.0.1:9"), "--admin", "127.0.0.1:0", "--admin-allow-remote")
	_, stderr, code := runTunnel(t, args...)
	if code != 2 || len(scanLines(stderr)) != 1 || !strings.Contains(stderr, "--admin-allow-remote: requires --admin-token-file") {
		t.Errorf("remote admin without a token: exit %d, stderr %q; want exit 2 and one line", code, stderr)
	}
	tokenFile := filepath.Join(t.TempDir(), "admin-token")
	if err := os.WriteFile(tokenFile, []byte("first-token-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startProc(t, append(args, "--admin-token-file", tokenFile)...)
	u := "http://" + srv.adminAddr(t)
	first, second := "Bearer first-token-0123456789abcdef", "Bearer second-token-0123456789abcdef"
	for _, tt := range []struct {
		name, method, path string
		hdr                []string
		want               int
	}{
		{"health probe", "GET", "/healthz", nil, 200},
		{"metrics without the token", "GET", "/metrics", nil, 401},
		{"reload without the token", "POST", "/reload", nil, 401},
		{"a wrong token", "GET", "/metrics", []string{"Authorization", "Bearer first-token-0123456789abcdeX"}, 401},
		{"metrics with the token", "GET", "/metrics", []string{"Authorization", first}, 200},
		{"scrape by host name", "GET", "/metrics", []string{"Authorization", first, "Host", "tunnel1.corp.example:9090"}, 200},
	} {
		if code := adminReq(t, tt.method, u+tt.path, "", tt.hdr...); code != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, code, tt.want)
		}
	}
	if err := os.WriteFile(tokenFile+".new", []byte("second-token-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tokenFile+".new", tokenFile); err != nil {
		t.Fatal(err)
	}
	srv.waitEvent(t, waitTimeout, "reload_applied after the token file changed", isEvent("reload_applied", "trigger", "file_changed"))
	if code := adminReq(t, "GET", u+"/metrics", "", "Authorization", first); code != 401 {
		t.Errorf("the old token after rotation: %d, want 401", code)
	}
	if code := adminReq(t, "GET", u+"/metrics", "", "Authorization", second); code != 200 {
		t.Errorf("the new token after rotation: %d, want 200", code)
	}
}
