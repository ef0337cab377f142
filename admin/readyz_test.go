package admin_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/tunnel-dev/tunnel/admin"
)

// /readyz lists the exposes under a verdict they do not change, and
// /readyz?expose=NAME answers for one alone.
func TestReadyzExposes(t *testing.T) {
	defer http.DefaultClient.CloseIdleConnections()
	state := map[string]error{"ssh": nil, "db": errors.New("no client publishes it")}
	var notReady error
	h, err := admin.NewHandler(admin.Config{Ready: func() error { return notReady }, Exposes: func() map[string]error { return state }})
	if err != nil {
		t.Fatal(err)
	}
	url := serve(t, h)
	host := "Host"
	local := strings.TrimPrefix(url, "http://")
	for _, tt := range []struct {
		path string
		code int
		body string
	}{
		{"/readyz", 200, "ready\nexpose db: down: no client publishes it\nexpose ssh: up\n"},
		{"/readyz?expose=ssh", 200, "expose ssh: up\n"},
		{"/readyz?expose=db", 503, "expose db: down: no client publishes it\n"},
		{"/readyz?expose=nope", 404, "no expose named \"nope\"\n"},
	} {
		code, body := do(t, "GET", url+tt.path, host, local)
		if code != tt.code || body != tt.body {
			t.Errorf("GET %s = %d %q, want %d %q", tt.path, code, body, tt.code, tt.body)
		}
	}
	notReady = errors.New("no TLS material loaded")
	if code, body := do(t, "GET", url+"/readyz", host, local); code != 503 || body != "not ready: no TLS material loaded\nexpose db: down: no client publishes it\nexpose ssh: up\n" {
		t.Errorf("GET /readyz when not ready = %d %q", code, body)
	}
}
