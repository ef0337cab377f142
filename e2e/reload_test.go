package e2e

import (
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/devpki"
)

// The reload tests rotate files under a running tunnel and check that the
// new files are served, that a bad file is refused with the old state
// kept, and that established sessions carry on unless the new configuration
// refuses their client.

// loadCA reads the CA that `tunnel cert init` wrote into pk.dir.
func loadCA(t *testing.T, pk *pki) *devpki.KeyPair {
	t.Helper()
	cert := readCert(t, pk.ca)
	b, err := os.ReadFile(filepath.Join(pk.dir, "ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("ca-key.pem: no PEM block")
	}
	key, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		t.Fatalf("ca-key.pem: %T is not a signing key", key)
	}
	return &devpki.KeyPair{Cert: cert, Key: signer}
}

// leafPEM issues a certificate from ca for tmpl's names and usage, under a
// fresh key, and returns the certificate's serial (hex) and both PEMs.
func leafPEM(t *testing.T, ca *devpki.KeyPair, tmpl *x509.Certificate) (serial string, certPEM, keyPEM []byte) {
	t.Helper()
	kp, err := devpki.NewLeaf(ca, tmpl, devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return kp.Cert.SerialNumber.Text(16), kp.CertPEM, kp.KeyPEM
}

// serverTmpl is the template of a server certificate for the e2e servers.
func serverTmpl() *x509.Certificate {
	return &x509.Certificate{
		Subject: pkix.Name{CommonName: "tunnel-srv"}, DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
}

// clientTmpl is the template of a client certificate named cn.
func clientTmpl(cn string) *x509.Certificate {
	return &x509.Certificate{
		Subject:  pkix.Name{CommonName: cn},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// renameInto writes data to path by renaming a new file over it, as editors,
// cert-manager and step-ca do.
func renameInto(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// servedSerial completes a TLS handshake with the server at addr as the
// client of pk and returns the serial (hex) of the certificate it presents.
func servedSerial(t *testing.T, pk *pki, addr string) string {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(pk.clientCert, pk.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(readCert(t, pk.ca))
	d := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{
		RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{cert}, NextProtos: []string{"tunnel/1"},
	})
	if err != nil {
		t.Fatalf("TLS handshake with %s: %v", addr, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Text(16)
}

// hashBackend reads each connection to EOF and answers with the SHA-256 of
// what it read.
func hashBackend(t *testing.T) string {
	return startBackend(t, func(c *net.TCPConn) {
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			return
		}
		c.Write(h.Sum(nil))
		c.CloseWrite()
	})
}

// pacedUpload sends n bytes from seed through the forward at addr in chunks
// of chunk bytes, pausing between chunks so the transfer spans a while, and
// checks the hash backend's answer. It returns an error instead of failing,
// for use from goroutines.
func pacedUpload(addr string, seed uint64, n, chunk int64, pause time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * waitTimeout))
	h := sha256.New()
	src := io.TeeReader(randReader(seed, n), h)
	for sent := int64(0); sent < n; sent += chunk {
		if _, err := io.CopyN(c, src, min(chunk, n-sent)); err != nil {
			return fmt.Errorf("stream %d: after %d bytes: %w", seed, sent, err)
		}
		time.Sleep(pause) // pacing, so the transfer overlaps the reloads
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("stream %d: reading the backend's hash: %w", seed, err)
	}
	if want := h.Sum(nil); !slices.Equal(got, want) {
		return fmt.Errorf("stream %d: backend hashed %x, sent %x", seed, got, want[:8])
	}
	return nil
}

// uploads runs streams pacedUploads at once and returns a function that
// waits for them and fails the test on any error.
func uploads(t *testing.T, addr string, streams int, n, chunk int64, pause time.Duration) (wait func()) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Go(func() { errs <- pacedUpload(addr, uint64(100+i), n, chunk, pause) })
	}
	return func() {
		t.Helper()
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	}
}

// waitServing polls until the server at addr presents the certificate with
// serial, and returns how long that took.
func waitServing(t *testing.T, pk *pki, addr, serial string) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(waitTimeout)
	for {
		if got := servedSerial(t, pk, addr); got == serial {
			return time.Since(start)
		} else if time.Now().After(deadline) {
			t.Fatalf("server still presents serial %s, want %s, after %v", got, serial, waitTimeout)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

// rotatingServer starts a server whose certificate and key live in their
// own directory, a client with a forward "sink" to a hash backend, and
// returns them with the TLS directory.
func rotatingServer(t *testing.T, pk *pki, extra ...string) (srv, cli *proc, dir string) {
	t.Helper()
	dir = t.TempDir()
	for _, f := range []string{pk.serverCert, pk.serverKey} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	args := serverArgs(pk, "127.0.0.1:0", "sink="+hashBackend(t))
	args = withFlag(args, "--cert", filepath.Join(dir, filepath.Base(pk.serverCert)))
	args = withFlag(args, "--key", filepath.Join(dir, filepath.Base(pk.serverKey)))
	srv = startProc(t, append(args, extra...)...)
	cli = startProc(t, clientArgs(pk, srv.addr(t), "sink")...)
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	return srv, cli, dir
}

// noSessionChurn checks that the client kept its one session throughout.
func noSessionChurn(t *testing.T, srv, cli *proc) {
	t.Helper()
	if n := len(cli.matching(isEvent("session_opened"))); n != 1 {
		t.Errorf("client opened %d sessions, want 1: a reload dropped its session", n)
	}
	if evs := srv.matching(isEvent("session_revoked")); len(evs) > 0 {
		t.Errorf("server closed sessions on reload: %v", evs)
	}
}

// TestReloadRotationUnderLoad: 100 certificate+key rotations by atomic
// rename, 50 ms apart, while 20 streams upload 16 MiB each: every stream
// arrives intact, the session stays, and handshakes after the rotation
// present the new serial. It also measures how long a reload takes, from
// the rename to the new certificate being served.
func TestReloadRotationUnderLoad(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	srv, cli, dir := rotatingServer(t, pk)
	ca := loadCA(t, pk)
	certFile, keyFile := filepath.Join(dir, filepath.Base(pk.serverCert)), filepath.Join(dir, filepath.Base(pk.serverKey))

	const streams, size = 20, 16 << 20
	wait := uploads(t, cli.forwardAddr(t, "sink"), streams, size, 1<<20, 200*time.Millisecond)
	var last string
	for range 100 {
		serial, c, k := leafPEM(t, ca, serverTmpl())
		renameInto(t, keyFile, k)
		renameInto(t, certFile, c)
		last = serial
		time.Sleep(50 * time.Millisecond) // the issue's rotation interval
	}
	wait()
	waitServing(t, pk, srv.addr(t), last)
	noSessionChurn(t, srv, cli)
	applied := len(srv.matching(isEvent("reload_applied")))
	t.Logf("100 rotations under %d x %d MiB uploads: %d reload_applied, %d reload_rejected (a key renamed before its certificate)",
		streams, size>>20, applied, len(srv.matching(isEvent("reload_rejected"))))
	// Rotations 50 ms apart are one long burst to the 100 ms debounce,
	// which still reloads at least once a second while it lasts.
	if applied < 2 {
		t.Errorf("%d reloads during 5 s of rotations, want several", applied)
	}

	// Reload latency: rename to the new certificate being served, measured
	// by polling handshakes (10 ms resolution; the debounce is 100 ms).
	var took []time.Duration
	for range 5 {
		serial, c, k := leafPEM(t, ca, serverTmpl())
		renameInto(t, keyFile, k)
		renameInto(t, certFile, c)
		took = append(took, waitServing(t, pk, srv.addr(t), serial))
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	t.Logf("reload latency, rename to new certificate served (5 rotations): min %v, median %v, max %v",
		took[0].Round(time.Millisecond), took[2].Round(time.Millisecond), took[4].Round(time.Millisecond))
	if took[4] > 5*time.Second { // liveness: 100 ms debounce plus a load, with a wide margin
		t.Errorf("a reload took %v", took[4])
	}
}

// TestReloadKubernetesSymlinkSwap: the certificate and key are mounted as
// Kubernetes mounts a secret (tls.crt -> ..data/tls.crt, ..data ->
// ..TIMESTAMP) and rotated by swapping the ..data symlink.
func TestReloadKubernetesSymlinkSwap(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	ca := loadCA(t, pk)
	dir := t.TempDir()
	gen := 0
	swap := func(certPEM, keyPEM []byte) {
		gen++
		ts := fmt.Sprintf("..2026_01_01_00_00_%02d.%d", gen, gen)
		if err := os.Mkdir(filepath.Join(dir, ts), 0o755); err != nil {
			t.Fatal(err)
		}
		for name, data := range map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM} {
			if err := os.WriteFile(filepath.Join(dir, ts, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		old, _ := os.Readlink(filepath.Join(dir, "..data"))
		if err := os.Symlink(ts, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		if old != "" {
			os.RemoveAll(filepath.Join(dir, old)) // as the kubelet does
		}
	}
	_, c, k := leafPEM(t, ca, serverTmpl())
	swap(c, k)
	for _, name := range []string{"tls.crt", "tls.key"} {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	args := serverArgs(pk, "127.0.0.1:0", "sink="+hashBackend(t))
	args = withFlag(withFlag(args, "--cert", filepath.Join(dir, "tls.crt")), "--key", filepath.Join(dir, "tls.key"))
	srv := startProc(t, args...)
	cli := startProc(t, clientArgs(pk, srv.addr(t), "sink")...)
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))

	wait := uploads(t, cli.forwardAddr(t, "sink"), 4, 4<<20, 256<<10, 50*time.Millisecond)
	var last string
	for range 20 {
		serial, c, k := leafPEM(t, ca, serverTmpl())
		swap(c, k)
		last = serial
		time.Sleep(50 * time.Millisecond)
	}
	wait()
	waitServing(t, pk, srv.addr(t), last)
	noSessionChurn(t, srv, cli)
	// A load that reads the certificate before a swap and the key after it
	// is rejected, and the swap's own events reload again.
	t.Logf("20 ..data swaps: %d reload_applied, %d reload_rejected",
		len(srv.matching(isEvent("reload_applied"))), len(srv.matching(isEvent("reload_rejected"))))
}

// TestReloadHalfWrittenKey: a key file caught half-written is refused with
// reload_rejected and the old certificate stays in service; the complete
// file is then taken.
func TestReloadHalfWrittenKey(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	srv, cli, dir := rotatingServer(t, pk)
	addr := srv.addr(t)
	before := servedSerial(t, pk, addr)
	certFile, keyFile := filepath.Join(dir, filepath.Base(pk.serverCert)), filepath.Join(dir, filepath.Base(pk.serverKey))

	serial, c, k := leafPEM(t, loadCA(t, pk), serverTmpl())
	if err := os.WriteFile(keyFile, k[:len(k)/2], 0o600); err != nil { // in place, cut short
		t.Fatal(err)
	}
	ev := srv.waitEvent(t, waitTimeout, "reload_rejected", isEvent("reload_rejected"))
	t.Logf("rejected: %v", ev["error"])
	if got := servedSerial(t, pk, addr); got != before {
		t.Fatalf("after a rejected reload the server presents %s, want the old %s", got, before)
	}
	if err := pacedUpload(cli.forwardAddr(t, "sink"), 1, 1<<20, 1<<20, 0); err != nil {
		t.Fatalf("stream after a rejected reload: %v", err)
	}
	renameInto(t, certFile, c)
	renameInto(t, keyFile, k)
	waitServing(t, pk, addr, serial)
	noSessionChurn(t, srv, cli)
}

// TestReloadCARemoved: removing a client's CA from the bundle closes that
// client's session (session_revoked, ca_removed) and refuses its redial,
// while a client of the remaining CA keeps transferring.
func TestReloadCARemoved(t *testing.T) {
	t.Parallel()
	pkA := pkiDir(t) // server certificate and client app1
	dirB := t.TempDir()
	mustTunnel(t, "cert", "init", dirB)
	pkB := &pki{dir: dirB, ca: filepath.Join(dirB, "ca.pem")}
	pkB.clientCert, pkB.clientKey = pkB.issue(t, "--client", "app2")

	caA, err := os.ReadFile(pkA.ca)
	if err != nil {
		t.Fatal(err)
	}
	caB, err := os.ReadFile(pkB.ca)
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(t.TempDir(), "clients-ca.pem")
	renameInto(t, bundle, append(slices.Clone(caA), caB...))

	srv := startProc(t, withFlag(serverArgs(pkA, "127.0.0.1:0", "sink="+hashBackend(t)), "--ca", bundle)...)
	addr := srv.addr(t)
	cli1 := startProc(t, clientArgs(pkA, addr, "sink")...)
	// app2 verifies the server with CA A, and presents a certificate of CA B.
	args2 := withFlag(withFlag(clientArgs(pkA, addr, "sink"), "--cert", pkB.clientCert), "--key", pkB.clientKey)
	cli2 := startProc(t, args2...)
	cli1.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	cli2.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))

	wait := uploads(t, cli1.forwardAddr(t, "sink"), 2, 4<<20, 256<<10, 50*time.Millisecond)
	failedBefore := len(srv.matching(isEvent("handshake_failed")))
	renameInto(t, bundle, caA)
	srv.waitEvent(t, waitTimeout, "session_revoked of app2", isEvent("session_revoked", "reason", "ca_removed", "identity_cn", "app2"))
	// app2 redials and is refused by the handshake.
	srv.waitEventN(t, waitTimeout, failedBefore+1, "handshake_failed of the redial", isEvent("handshake_failed"))
	wait()
	if n := len(cli1.matching(isEvent("session_opened"))); n != 1 {
		t.Errorf("the unrelated client opened %d sessions, want 1", n)
	}
	for _, ev := range srv.matching(isEvent("session_revoked")) {
		if ev["identity_cn"] != "app2" {
			t.Errorf("session_revoked for a client whose CA stayed: %v", ev)
		}
	}
}

// TestReloadAllowlistNarrowed: a config file whose allowlist loses an
// address closes the sessions from that address (ip_not_allowed) and
// refuses their redial; a client from an address still allowed carries on.
func TestReloadAllowlistNarrowed(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	sink := hashBackend(t)
	cfg := filepath.Join(t.TempDir(), "server.yaml")
	conf := func(allow string) []byte {
		return fmt.Appendf(nil, "listen: 127.0.0.1:0\nallow: [%s]\nroutes:\n  - sink=%s\n", allow, sink)
	}
	renameInto(t, cfg, conf("127.0.0.1/32, 127.0.0.2/32"))
	args := withoutFlag(withoutFlag(withoutFlag(serverArgs(pk, "127.0.0.1:0"), "--allow"), "--listen"), "--route")
	srv := startProc(t, append(args, "--config", cfg)...)
	addr := srv.addr(t)
	stay := startProc(t, clientArgs(pk, addr, "sink")...)
	gone := startProc(t, append(clientArgs(pk, addr, "sink"), "--source", "127.0.0.2")...)
	stay.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	gone.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))

	wait := uploads(t, stay.forwardAddr(t, "sink"), 2, 4<<20, 256<<10, 50*time.Millisecond)
	renameInto(t, cfg, conf("127.0.0.1/32"))
	ev := srv.waitEvent(t, waitTimeout, "session_revoked", isEvent("session_revoked", "reason", "ip_not_allowed"))
	if h := addrHost(ev); h != "127.0.0.2" {
		t.Errorf("closed the session from %s, want 127.0.0.2", h)
	}
	srv.waitEvent(t, waitTimeout, "conn_rejected of the redial", isEvent("conn_rejected", "reason", "ip_not_allowed"))
	wait()
	if n := len(stay.matching(isEvent("session_opened"))); n != 1 {
		t.Errorf("the client still allowed opened %d sessions, want 1", n)
	}
	// Only 127.0.0.2 was cut (its session, and any redial that completed a
	// handshake while the allowlist was being swapped).
	for _, ev := range srv.matching(isEvent("session_revoked")) {
		if addrHost(ev) != "127.0.0.2" {
			t.Errorf("closed a session from an address still allowed: %v", ev)
		}
	}
	// SIGHUP reloads too, and an unchanged configuration closes nothing.
	revoked := len(srv.matching(isEvent("session_revoked")))
	srv.signal(t, syscall.SIGHUP)
	srv.waitEvent(t, waitTimeout, "reload_applied after SIGHUP", isEvent("reload_applied", "trigger", "sighup"))
	if got := len(srv.matching(isEvent("session_revoked"))); got != revoked {
		t.Errorf("SIGHUP with an unchanged configuration closed %d sessions", got-revoked)
	}
}
