package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"

	"github.com/sirupsen/logrus"
)

// cmdTLSRate makes --count full mutual-TLS handshakes, --concurrency at a
// time, with no session resumption, and reports their rate. With --alpn
// tunnel/1 each is a tunnel session proved up by one yamux ping; without,
// each is a plain TLS connection (stunnel's) proved up by one byte echoed
// through it.
func cmdTLSRate(ctx context.Context, fs *flag.FlagSet, args []string, stdout io.Writer) error {
	addr := fs.String("addr", "", "server address")
	count := fs.Int("count", 1000, "handshakes in all")
	conc := fs.Int("concurrency", 8, "handshakes at once")
	certFile := fs.String("cert", "", "client certificate, PEM")
	keyFile := fs.String("key", "", "its key, PEM")
	caFile := fs.String("ca", "", "CA bundle the server certificate chains to")
	name := fs.String("server-name", "", "name the server certificate must carry")
	alpn := fs.String("alpn", "", "ALPN protocol to offer: tunnel/1 for a tunnel server; none for stunnel")
	if err := parse(fs, args, "addr", "cert", "key", "ca", "server-name"); err != nil {
		return err
	}
	if err := positive(map[string]int64{"count": int64(*count), "concurrency": int64(*conc)}); err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return &usageError{fmt.Sprintf("--cert/--key: %v", err)}
	}
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		return &usageError{fmt.Sprintf("--ca: %v", err)}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return &usageError{fmt.Sprintf("--ca: no certificate in %s", *caFile)}
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: *name,
		ClientSessionCache: nil, // every handshake a full one
	}
	if *alpn != "" {
		cfg.NextProtos = []string{*alpn}
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	return emit(stdout, rate(*count, *conc, func() error {
		if *alpn == "tunnel/1" {
			s, err := session(ctx, *addr, netip.Addr{}, cfg, logrus.NewEntry(log))
			if err != nil {
				return err
			}
			return s.Close()
		}
		c, err := dial(ctx, *addr)
		if err != nil {
			return err
		}
		tc := tls.Client(c, cfg)
		defer tc.Close()
		if _, err := tc.Write([]byte{1}); err != nil {
			return err
		}
		var b [1]byte
		_, err = io.ReadFull(tc, b[:])
		return err
	}))
}
