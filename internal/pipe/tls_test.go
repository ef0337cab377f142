package pipe

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/devpki"
)

// tlsPair returns the two ends of a TLS 1.3 connection over loopback TCP.
func tlsPair(t *testing.T) (client, server *tls.Conn) {
	t.Helper()
	ca, err := devpki.NewCA("pipe test CA", devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := devpki.NewLeaf(ca, &x509.Certificate{
		Subject: pkix.Name{CommonName: "pipe"}, DNSNames: []string{"pipe"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	a, b := tcpPair(t)
	server = tls.Server(b, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.Cert.Raw}, PrivateKey: leaf.Key}}})
	client = tls.Client(a, &tls.Config{RootCAs: pool, ServerName: "pipe"})
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return client, server
}

// A TLS connection returns one record per Read; Run gathers the records it
// has already received, so what reaches the other side goes out in writes
// of several records, not one write per 16 KiB record (raw mode's backend
// writes).
func TestRunGathersTLSRecords(t *testing.T) {
	client, server := tlsPair(t)
	b, backend := tcpPair(t)
	rec := &recordWrites{TCPConn: b}
	done := make(chan error, 1)
	go func() { _, _, err := Run(server, rec, Options{}); done <- err }()
	payload := bytes.Repeat([]byte("gathered "), 1<<20) // 9 MiB
	go func() {
		client.Write(payload)
		client.CloseWrite()
	}()
	backend.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(backend)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("backend read %d bytes (%v), want %d", len(got), err, len(payload))
	}
	client.Close()
	backend.Close()
	<-done
	sizes := rec.writes()
	if big := slices.Max(sizes); big <= 16<<10 {
		t.Errorf("the largest write to the backend was %d bytes: records were not gathered", big)
	}
	t.Logf("%d MiB in %d writes to the backend (largest %d KiB)", len(payload)>>20, len(sizes), slices.Max(sizes)>>10)
}
