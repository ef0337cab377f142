package mux

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"net"
	"strconv"
	"testing"

	"github.com/hashicorp/yamux"
	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/devpki"
)

// tlsPair returns the two ends of a TLS 1.3 connection over loopback TCP,
// each over a Transport if transport is set.
func tlsPair(b *testing.B, transport bool) (client, server *tls.Conn) {
	b.Helper()
	ca, err := devpki.NewCA("bench CA", devpki.Options{})
	if err != nil {
		b.Fatal(err)
	}
	leaf, err := devpki.NewLeaf(ca, &x509.Certificate{
		Subject: pkix.Name{CommonName: "bench"}, DNSNames: []string{"bench"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, devpki.Options{})
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cert := tls.Certificate{Certificate: [][]byte{leaf.Cert.Raw}, PrivateKey: leaf.Key}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *tls.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		if transport {
			c = NewTransport(c)
		}
		sc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
		sc.Handshake()
		accepted <- sc
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	if transport {
		raw = NewTransport(raw)
	}
	cc := tls.Client(raw, &tls.Config{RootCAs: pool, ServerName: "bench", MinVersion: tls.VersionTLS13})
	if err := cc.Handshake(); err != nil {
		b.Fatal(err)
	}
	sc := <-accepted
	if sc == nil {
		b.Fatal("accept failed")
	}
	b.Cleanup(func() { cc.Close(); sc.Close() })
	return cc, sc
}

// BenchmarkStreamOverTLS moves bytes through one stream over TLS: with
// plain yamux (header and body apart: two TLS records per frame), with the
// guarded Session of Client and Server, and with that session over a
// Transport (a frame's records in one syscall, reads buffered). chunk is
// the size of each Write, as the copy loop makes them.
func BenchmarkStreamOverTLS(b *testing.B) {
	log := logrus.NewEntry(logrus.New())
	log.Logger.SetOutput(io.Discard)
	for _, chunk := range []int{64, 16 << 10, 64 << 10} {
		for _, mode := range []struct {
			name      string
			transport bool
			pair      benchPair
		}{
			{"yamux", false, func(b *testing.B, cc, sc net.Conn) (func() (benchWriter, error), func() (io.ReadCloser, error)) {
				cfg := yamux.DefaultConfig()
				cfg.LogOutput = io.Discard
				cs, _ := yamux.Client(cc, cfg)
				ss, _ := yamux.Server(sc, cfg)
				b.Cleanup(func() { cs.Close(); ss.Close() })
				return func() (benchWriter, error) { st, err := cs.OpenStream(); return yamuxConn{st}, err },
					func() (io.ReadCloser, error) { return ss.AcceptStream() }
			}},
			{"guarded", false, guardedPair(log)},
			{"transport", true, guardedPair(log)},
		} {
			b.Run(mode.name+"/chunk="+itoa(chunk), func(b *testing.B) {
				cc, sc := tlsPair(b, mode.transport)
				open, accept := mode.pair(b, cc, sc)
				done := make(chan int64, 1)
				go func() {
					st, err := accept()
					if err != nil {
						done <- -1
						return
					}
					n, _ := io.CopyBuffer(io.Discard, st, make([]byte, 64<<10))
					st.Close()
					done <- n
				}()
				st, err := open()
				if err != nil {
					b.Fatal(err)
				}
				buf := make([]byte, chunk)
				b.SetBytes(int64(chunk))
				b.ReportAllocs()
				var sent int64
				for b.Loop() {
					n, err := st.Write(buf)
					if err != nil {
						b.Fatal(err)
					}
					sent += int64(n)
				}
				st.CloseWrite()
				if got := <-done; got != sent {
					b.Fatalf("received %d bytes, sent %d", got, sent)
				}
			})
		}
	}
}

type yamuxConn struct{ *yamux.Stream }

func (c yamuxConn) CloseWrite() error { return c.Stream.Close() }

// benchWriter is the sending end of a benchmark stream.
type benchWriter interface {
	io.Writer
	CloseWrite() error
}

// benchPair starts sessions on cc and sc and returns how to open a stream
// on the first and accept it on the second.
type benchPair func(b *testing.B, cc, sc net.Conn) (open func() (benchWriter, error), accept func() (io.ReadCloser, error))

func guardedPair(log *logrus.Entry) benchPair {
	return func(b *testing.B, cc, sc net.Conn) (func() (benchWriter, error), func() (io.ReadCloser, error)) {
		cs, err := Client(cc, Options{Log: log})
		if err != nil {
			b.Fatal(err)
		}
		ss, err := Server(sc, Options{Log: log, MaxStreams: 1})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cs.Close(); ss.Close() })
		return func() (benchWriter, error) { return cs.Open() },
			func() (io.ReadCloser, error) { return ss.Accept() }
	}
}

func itoa(n int) string {
	if n >= 1<<10 && n%(1<<10) == 0 {
		return strconv.Itoa(n>>10) + "KiB"
	}
	return strconv.Itoa(n)
}
