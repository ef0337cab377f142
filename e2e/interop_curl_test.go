package e2e

import (
	"context"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
)

// curlGet runs curl with args and returns the SHA-256 and length of the
// body it wrote to stdout, its stderr and its exit error.
func curlGet(t *testing.T, args ...string) (sum [32]byte, n int64, stderr string, err error) {
	t.Helper()
	bin := requireTool(t, "curl")
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--silent", "--show-error", "--fail", "--max-time", "30", "-o", "-"}, args...)...)
	var errb strings.Builder
	cmd.Stderr = &errb
	out, perr := cmd.StdoutPipe()
	if perr != nil {
		t.Fatal(perr)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sum, n, _ = recvHashed(out)
	err = cmd.Wait()
	return sum, n, errb.String(), err
}

// TestCurlInterop: curl, an HTTP and TLS client we did not write (OpenSSL
// underneath), fetches 16 MiB from a Go HTTP backend: as plain HTTP through
// a tunnel client's forward, and as HTTPS with its client certificate
// straight to the tunnel server's raw route; without a certificate, or
// with one from another CA, it gets no byte.
func TestCurlInterop(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	other := pkiDir(t) // another CA, same names
	body, _ := io.ReadAll(randReader(61, 16<<20))
	want := sha256.Sum256(body)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	web := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) })}
	go web.Serve(ln)
	t.Cleanup(func() { web.Close() })

	srv := startProc(t, append(serverArgs(pk, "127.0.0.1:0", "web="+ln.Addr().String()), "--raw-route", "web")...)
	cli := startProc(t, clientArgs(pk, srv.addr(t), "web")...)

	t.Run("http through the tunnel", func(t *testing.T) {
		sum, n, stderr, err := curlGet(t, "http://"+cli.forwardAddr(t, "web")+"/blob")
		if err != nil || n != int64(len(body)) || sum != want {
			t.Fatalf("curl: %d bytes (sha256 %x), err %v, stderr %q; want %d bytes, sha256 %x", n, sum[:8], err, stderr, len(body), want[:8])
		}
	})

	// curl offers ALPN (h2, http/1.1) by default; the tunnel server speaks
	// only its own protocol or none (a raw client), so --no-alpn.
	https := "https://" + srv.addr(t) + "/blob"
	t.Run("https with a client certificate to the raw route", func(t *testing.T) {
		sum, n, stderr, err := curlGet(t, "--no-alpn", "--cacert", pk.ca, "--cert", pk.clientCert, "--key", pk.clientKey, https)
		if err != nil || n != int64(len(body)) || sum != want {
			t.Fatalf("curl: %d bytes (sha256 %x), err %v, stderr %q; want %d bytes, sha256 %x", n, sum[:8], err, stderr, len(body), want[:8])
		}
		srv.waitEvent(t, waitTimeout, "raw session_opened", isEvent("session_opened", "mode", "raw", "identity_cn", "app1"))
	})
	t.Run("https without a client certificate", func(t *testing.T) {
		_, n, stderr, err := curlGet(t, "--no-alpn", "--cacert", pk.ca, https)
		if err == nil || n != 0 {
			t.Fatalf("curl without a certificate: %d bytes, err %v (stderr %q); want a failure and no byte", n, err, stderr)
		}
		t.Logf("curl without a certificate: %v: %s", err, strings.TrimSpace(stderr))
	})
	t.Run("https with a certificate from another CA", func(t *testing.T) {
		_, n, stderr, err := curlGet(t, "--no-alpn", "--cacert", pk.ca, "--cert", other.clientCert, "--key", other.clientKey, https)
		if err == nil || n != 0 {
			t.Fatalf("curl with a foreign certificate: %d bytes, err %v (stderr %q); want a failure and no byte", n, err, stderr)
		}
		srv.waitEvent(t, waitTimeout, "handshake_failed unknown_authority", isEvent("handshake_failed", "reason", "unknown_authority"))
	})
}
