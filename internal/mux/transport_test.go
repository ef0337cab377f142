package mux

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"net"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/tunnel-dev/tunnel/internal/devpki"
)

// tlsSessions runs a Client session and a Server session over TLS 1.3 over
// loopback TCP, each TLS connection over a Transport over a countConn (the
// client's is returned). Both are closed at cleanup.
func tlsSessions(t *testing.T) (*countConn, *Session, *Session) {
	t.Helper()
	logger, _ := logtest.NewNullLogger()
	log := logrus.NewEntry(logger)
	ca, err := devpki.NewCA("test CA", devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := devpki.NewLeaf(ca, &x509.Certificate{
		Subject: pkix.Name{CommonName: "test"}, DNSNames: []string{"test"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		s   *Session
		err error
	}
	srv := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srv <- result{nil, err}
			return
		}
		tc := tls.Server(NewTransport(c), &tls.Config{
			Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.Cert.Raw}, PrivateKey: leaf.Key}},
			MinVersion:   tls.VersionTLS13,
		})
		if err := tc.Handshake(); err != nil {
			srv <- result{nil, err}
			return
		}
		s, err := Server(tc, Options{Log: log, MaxStreams: 16})
		srv <- result{s, err}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cc := &countConn{Conn: raw}
	tc := tls.Client(NewTransport(cc), &tls.Config{RootCAs: pool, ServerName: "test", MinVersion: tls.VersionTLS13})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	cs, err := Client(tc, Options{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	r := <-srv
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { cs.Close(); r.s.Close() })
	return cc, cs, r.s
}

// A frame larger than a TLS record leaves in one write to the socket, not
// one per record; frames without a body are never held back; every byte
// arrives in order.
func TestTransportOneSocketWritePerFrame(t *testing.T) {
	cc, cs, ss := tlsSessions(t)

	// Header-only frames (pings) go out at once in both directions.
	for name, s := range map[string]*Session{"client": cs, "server": ss} {
		done := make(chan error, 1)
		go func() { _, err := s.Ping(); done <- err }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s ping: %v", name, err)
			}
		case <-time.After(10 * time.Second): // a ping on loopback takes well under a millisecond
			t.Fatalf("%s ping over a Transport did not return within 10 s", name)
		}
	}

	type got struct {
		sum [32]byte
		n   int64
		err error
	}
	done := make(chan got, 1)
	go func() {
		st, err := ss.Accept()
		if err != nil {
			done <- got{err: err}
			return
		}
		defer st.Close()
		st.SetReadDeadline(time.Now().Add(30 * time.Second))
		h := sha256.New()
		n, err := io.Copy(h, st)
		var g got
		copy(g.sum[:], h.Sum(nil))
		g.n, g.err = n, err
		done <- g
	}()
	st, err := cs.Open()
	if err != nil {
		t.Fatal(err)
	}
	// Mixed sizes, each written by one Write: one yamux data frame each
	// (together less than the initial 256 KiB window, so none waits for
	// credit and none is split).
	sizes := []int{1, 100, 16 << 10, 16<<10 - headerSize, 64 << 10, 3, 90 << 10, 64<<10 + 1}
	h := sha256.New()
	var total int64
	before := cc.count()
	for i, n := range sizes {
		b := bytes.Repeat([]byte{byte(i + 1)}, n)
		h.Write(b)
		total += int64(n)
		if _, err := st.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	writes := cc.count() - before
	st.CloseWrite()
	g := <-done
	if g.err != nil || g.n != total || !bytes.Equal(g.sum[:], h.Sum(nil)) {
		t.Fatalf("server read %d bytes (%v), want %d; sha256 equal: %v", g.n, g.err, total, bytes.Equal(g.sum[:], h.Sum(nil)))
	}
	// Without the Transport these frames are 1+1+2+1+5+1+6+6 = 23 records,
	// one socket write each. With it, one write per frame (Stream.Write
	// returns once its frame is written), plus at most a window update or
	// the SYN and the guard's ping.
	if max := len(sizes) + 3; writes > max {
		t.Errorf("%d frames took %d socket writes, want at most %d (one per frame)", len(sizes), writes, max)
	}
}

func TestTransportCloseWrite(t *testing.T) {
	a, b := tcpConns(t)
	tr := NewTransport(a)
	if _, err := tr.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := tr.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(b)
	if err != nil || string(got) != "x" {
		t.Fatalf("peer read %q, %v; want \"x\" then EOF", got, err)
	}
}

func tcpConns(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-acc
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}
