package e2e

import (
	"context"
	"io"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// The openssl interop tests: openssl s_client, a plain TLS client, against
// the tunnel server's raw route.

// sClient runs `openssl s_client -quiet` against addr with extra args,
// writes n bytes from seed to its stdin and returns the SHA-256 of what it
// wrote, of the first n bytes it printed, and how many it printed before
// the server closed (s_client prints only application data with -quiet).
// The process is killed when done.
func sClient(t *testing.T, addr string, seed uint64, n int64, args ...string) (sent, got [32]byte, nGot int64) {
	t.Helper()
	bin := requireTool(t, "openssl")
	ctx, cancel := context.WithTimeout(t.Context(), 2*waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"s_client", "-quiet", "-connect", addr}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		// -quiet implies -ign_eof: closing stdin sends nothing, and
		// s_client keeps reading until the server closes or we kill it.
		sent, _, _ = sendHashed(stdin, seed, n)
		stdin.Close()
	})
	got, nGot, _ = recvHashed(io.LimitReader(stdout, n))
	cmd.Process.Kill() // ours, by pid: s_client never exits by itself with -ign_eof
	wg.Wait()
	cmd.Wait()
	if ctx.Err() != nil {
		t.Fatalf("openssl s_client %v did not finish in time; stderr:\n%s", args, lastLines(stderr.String(), 20))
	}
	if t.Failed() {
		t.Logf("openssl s_client stderr:\n%s", lastLines(stderr.String(), 20))
	}
	return sent, got, nGot
}

// TestOpenSSLClientToRawRoute: openssl s_client with a client certificate
// gets its 16 MiB echoed back through the raw route, and verifies the
// server's certificate and name while at it.
func TestOpenSSLClientToRawRoute(t *testing.T) {
	t.Parallel()
	requireTool(t, "openssl")
	pk := pkiDir(t)
	srv := startProc(t, append(serverArgs(pk, "127.0.0.1:0", "echo="+echoBackend(t)), "--raw-route", "echo")...)
	sent, got, n := sClient(t, srv.addr(t), 81, interopBytes,
		"-cert", pk.clientCert, "-key", pk.clientKey, "-CAfile", pk.ca,
		"-verify_return_error", "-verify_hostname", "localhost", "-servername", "localhost")
	if n != interopBytes || got != sent {
		t.Fatalf("openssl s_client through the raw route: got %d bytes (sha256 %x), want %d (sha256 %x)", n, got[:8], int64(interopBytes), sent[:8])
	}
	srv.waitEvent(t, waitTimeout, "raw session_opened", isEvent("session_opened", "mode", "raw", "identity_cn", "app1"))
}

// TestOpenSSLRefused: TLS 1.1, no client certificate, and a certificate
// from another CA are each refused: nothing is echoed, and the server logs
// why.
func TestOpenSSLRefused(t *testing.T) {
	t.Parallel()
	requireTool(t, "openssl")
	pk := pkiDir(t)
	other := t.TempDir()
	mustTunnel(t, "cert", "init", other)
	mustTunnel(t, "cert", "issue", other, "--client", "app1") // same name, wrong CA
	srv := startProc(t, append(serverArgs(pk, "127.0.0.1:0", "echo="+echoBackend(t)), "--raw-route", "echo")...)
	addr := srv.addr(t)
	tests := []struct {
		name   string
		args   []string
		reason string // the server's handshake_failed reason
	}{
		// SECLEVEL=0 lets OpenSSL 3 offer TLS 1.1 at all: the refusal
		// must come from the tunnel server, not from the client's defaults.
		{"tls1.1", []string{"-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-cert", pk.clientCert, "-key", pk.clientKey}, "protocol_version"},
		{"no client certificate", nil, "no_client_certificate"},
		{"certificate from another CA", []string{"-cert", filepath.Join(other, "app1.pem"), "-key", filepath.Join(other, "app1-key.pem")}, "unknown_authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, n := sClient(t, addr, 82, 4096, append(tt.args, "-CAfile", pk.ca)...)
			if n != 0 {
				t.Errorf("a refused openssl s_client got %d bytes echoed", n)
			}
			srv.waitEvent(t, waitTimeout, "handshake_failed "+tt.reason, isEvent("handshake_failed", "reason", tt.reason))
		})
	}
	if evs := srv.matching(isEvent("session_opened")); len(evs) != 0 {
		t.Errorf("refused clients opened sessions: %v", evs)
	}
}
