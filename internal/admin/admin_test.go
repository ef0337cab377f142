package admin_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/tunnel-dev/tunnel/internal/admin"
	"github.com/tunnel-dev/tunnel/trust"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func get(t *testing.T, h http.Handler, method, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec.Code, rec.Body.String()
}

func TestHandler(t *testing.T) {
	var ready atomic.Bool
	var reloads, refreshes atomic.Int32
	rc := trust.NewRevocationChecker(trust.DefaultRevocationPolicy(), trust.NewStore(nil), nil)
	defer rc.Close()
	h, err := admin.Handler(admin.Config{
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
	if code, body := get(t, h, "GET", "/healthz"); code != 200 || !strings.Contains(body, "ok") {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get(t, h, "GET", "/readyz"); code != 503 || !strings.Contains(body, "no session") {
		t.Errorf("/readyz while not ready: %d %q", code, body)
	}
	ready.Store(true)
	if code, _ := get(t, h, "GET", "/readyz"); code != 200 {
		t.Errorf("/readyz when ready: %d", code)
	}
	if code, _ := get(t, h, "GET", "/reload"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /reload: %d, want 405", code)
	}
	if code, _ := get(t, h, "POST", "/reload"); code != http.StatusAccepted || reloads.Load() != 1 {
		t.Errorf("POST /reload: %d, %d reloads", code, reloads.Load())
	}
	if code, _ := get(t, h, "POST", "/crl/refresh"); code != http.StatusAccepted || refreshes.Load() != 1 {
		t.Errorf("POST /crl/refresh: %d, %d refreshes", code, refreshes.Load())
	}
	code, body := get(t, h, "GET", "/metrics")
	for _, want := range []string{"tunnel_revocation_checks_total 0", `tunnel_crl_fetches_total{result="ok"} 0`, "go_goroutines", "process_"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics (%d) lacks %q", code, want)
		}
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
	h, err := admin.Handler(admin.Config{})
	if err != nil {
		t.Fatal(err)
	}
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
