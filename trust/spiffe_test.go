package trust_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/trust"
)

// An unreachable Workload API at start-up: NewSPIFFESource waits for the
// start timeout, then fails with one line naming the address, the wait and
// the last error, and leaves nothing running (goleak checks).
func TestSPIFFESourceUnreachableAtStart(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "no-agent.sock")
	start := time.Now()
	_, err := trust.NewSPIFFESource(context.Background(), trust.SPIFFEConfig{Addr: sock, StartTimeout: time.Second})
	took := time.Since(start)
	var se *trust.SPIFFEError
	if !errors.As(err, &se) {
		t.Fatalf("NewSPIFFESource = %v, want a *SPIFFEError", err)
	}
	msg := err.Error()
	t.Logf("after %v: %s", took.Round(time.Millisecond), msg)
	for _, want := range []string{"unix://" + sock, "no X.509-SVID within 1s", "connect"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("error is not one line: %q", msg)
	}
	if took < time.Second || took > 10*time.Second {
		t.Errorf("gave up after %v, want about the 1 s start timeout", took)
	}
}

func TestSPIFFESourceBadConfig(t *testing.T) {
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "")
	tests := []struct {
		cfg  trust.SPIFFEConfig
		want string
	}{
		{trust.SPIFFEConfig{}, "no address: give the Workload API socket, or set SPIFFE_ENDPOINT_SOCKET"},
		{trust.SPIFFEConfig{Addr: "relative/agent.sock"}, "invalid address"},
		{trust.SPIFFEConfig{Addr: "http://127.0.0.1:1"}, "invalid address"},
		{trust.SPIFFEConfig{Addr: "/run/agent.sock", StartTimeout: -time.Second}, "start timeout is negative"},
		{trust.SPIFFEConfig{Addr: "/run/agent.sock", ID: "https://a/b"}, `SVID ID "https://a/b" is not a SPIFFE ID`},
	}
	for _, tt := range tests {
		_, err := trust.NewSPIFFESource(context.Background(), tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewSPIFFESource(%+v) = %v, want an error containing %q", tt.cfg, err, tt.want)
		}
	}
	// The standard variable is the default address.
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "unix:///nonexistent/agent.sock")
	_, err := trust.NewSPIFFESource(context.Background(), trust.SPIFFEConfig{StartTimeout: 100 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), `"unix:///nonexistent/agent.sock"`) {
		t.Errorf("with SPIFFE_ENDPOINT_SOCKET set: %v", err)
	}
}
