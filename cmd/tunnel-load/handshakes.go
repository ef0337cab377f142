package main

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/devpki"
	"github.com/tunnel-dev/tunnel/internal/mux"
)

// HandshakesResult is what the handshakes command prints.
type HandshakesResult struct {
	Count      int     `json:"count"`
	AllUpSecs  float64 `json:"all_up_seconds"` // from the start until the last session was up
	P50ms      float64 `json:"p50_ms"`         // time until a session was up, median
	Retries    int     `json:"retries"`        // attempts refused (e.g. over --max-handshakes) and redialled
	FirstError string  `json:"first_error,omitempty"`
}

// cmdHandshakes starts --count tunnel sessions at once against a server, as
// that many clients would: TCP, mutual TLS offering tunnel/1, a yamux
// session and one ping (which proves the server accepted the certificate).
// With --ca-key and --sources each session has its own certificate and
// address, as distinct clients would, so per-identity and per-address
// limits apply to each as in production.
// A refused attempt is redialled with the client's backoff (at once, then
// full jitter from 100 ms). It reports when all were up, then closes them.
func cmdHandshakes(ctx context.Context, fs *flag.FlagSet, args []string, stdout io.Writer) error {
	addr := fs.String("addr", "", "tunnel server address")
	count := fs.Int("count", 500, "sessions")
	certFile := fs.String("cert", "", "client certificate, PEM")
	keyFile := fs.String("key", "", "its key, PEM")
	caFile := fs.String("ca", "", "CA bundle the server certificate chains to")
	name := fs.String("server-name", "", "name the server certificate must carry")
	caKey := fs.String("ca-key", "", "the CA's key: issue each session its own client certificate (distinct identities), instead of --cert/--key")
	sources := fs.String("sources", "", "loopback prefix, e.g. 127.1.0.0/16: session i dials from its i+1-th address (distinct client addresses); default: any")
	limit := fs.Duration("timeout", time.Minute, "give up after this long")
	if err := parse(fs, args, "addr", "ca", "server-name"); err != nil {
		return err
	}
	if err := positive(map[string]int64{"count": int64(*count)}); err != nil {
		return err
	}
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		return &usageError{fmt.Sprintf("--ca: %v", err)}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return &usageError{fmt.Sprintf("--ca: no certificate in %s", *caFile)}
	}
	certs, err := clientCerts(*count, *certFile, *keyFile, *caFile, *caKey)
	if err != nil {
		return err
	}
	var src []netip.Addr
	if *sources != "" {
		if src, err = sourceAddrs(*sources, *count); err != nil {
			return err
		}
	}
	cfgFor := func(i int) *tls.Config {
		return &tls.Config{
			MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{certs[i%len(certs)]}, RootCAs: pool,
			ServerName: *name, NextProtos: []string{"tunnel/1"},
		}
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	ctx, cancel := context.WithTimeout(ctx, *limit)
	defer cancel()

	type outcome struct {
		s       *mux.Session
		up      time.Duration
		retries int
		err     error
	}
	out := make([]outcome, *count)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range out {
		wg.Go(func() {
			o := &out[i]
			var from netip.Addr
			if src != nil {
				from = src[i]
			}
			cfg := cfgFor(i)
			for attempt := 0; ; attempt++ {
				o.s, o.err = session(ctx, *addr, from, cfg, logrus.NewEntry(log))
				if o.err == nil {
					o.up = time.Since(start)
					return
				}
				if ctx.Err() != nil {
					return
				}
				o.retries++
				if attempt > 0 {
					ceil := min(30*time.Second, 100*time.Millisecond<<min(attempt-1, 10))
					select {
					case <-time.After(rand.N(ceil) + 1):
					case <-ctx.Done():
						return
					}
				}
			}
		})
	}
	wg.Wait()
	allUp := time.Since(start)
	res := HandshakesResult{Count: *count, AllUpSecs: allUp.Seconds()}
	var ups []time.Duration
	for _, o := range out {
		res.Retries += o.retries
		if o.err != nil && res.FirstError == "" {
			res.FirstError = o.err.Error()
		}
		if o.s != nil {
			ups = append(ups, o.up)
			defer o.s.Close()
		}
	}
	if len(ups) < *count {
		return fmt.Errorf("%d of %d sessions up within %v; first error: %s", len(ups), *count, *limit, res.FirstError)
	}
	slices.Sort(ups)
	res.P50ms = float64(percentile(ups, 0.5)) / float64(time.Millisecond)
	return emit(stdout, res)
}

// clientCerts returns the client certificates of the sessions: n fresh ones
// signed by the CA (caCert, caKey) when caKey is set, else the one in
// certFile/keyFile.
func clientCerts(n int, certFile, keyFile, caCert, caKey string) ([]tls.Certificate, error) {
	if caKey == "" {
		if certFile == "" || keyFile == "" {
			return nil, &usageError{"--cert and --key, or --ca-key, are required"}
		}
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, &usageError{fmt.Sprintf("--cert/--key: %v", err)}
		}
		return []tls.Certificate{c}, nil
	}
	ca, err := tls.LoadX509KeyPair(caCert, caKey)
	if err != nil {
		return nil, &usageError{fmt.Sprintf("--ca/--ca-key: %v", err)}
	}
	signer, ok := ca.PrivateKey.(crypto.Signer)
	if !ok || ca.Leaf == nil {
		return nil, &usageError{"--ca-key: not a signing key for the --ca certificate"}
	}
	kp := &devpki.KeyPair{Cert: ca.Leaf, Key: signer}
	out := make([]tls.Certificate, n)
	for i := range out {
		leaf, err := devpki.NewLeaf(kp, &x509.Certificate{
			Subject:     pkix.Name{CommonName: fmt.Sprintf("load-client-%d", i)},
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, devpki.Options{})
		if err != nil {
			return nil, err
		}
		out[i] = tls.Certificate{Certificate: [][]byte{leaf.Cert.Raw}, PrivateKey: leaf.Key, Leaf: leaf.Cert}
	}
	return out, nil
}

// sourceAddrs returns the first n addresses after the base of a loopback
// prefix.
func sourceAddrs(prefix string, n int) ([]netip.Addr, error) {
	p, err := netip.ParsePrefix(prefix)
	if err != nil || !p.Addr().IsLoopback() || !p.Addr().Is4() {
		return nil, &usageError{fmt.Sprintf("--sources: %q is not an IPv4 loopback prefix", prefix)}
	}
	out := make([]netip.Addr, 0, n)
	for a := p.Masked().Addr().Next(); len(out) < n; a = a.Next() {
		if !p.Contains(a) {
			return nil, &usageError{fmt.Sprintf("--sources: %s holds fewer than %d addresses", prefix, n)}
		}
		out = append(out, a)
	}
	return out, nil
}

// session dials one tunnel session (from the address from, if valid) and
// pings it once.
func session(ctx context.Context, addr string, from netip.Addr, cfg *tls.Config, log *logrus.Entry) (*mux.Session, error) {
	nd := &net.Dialer{Timeout: 10 * time.Second}
	if from.IsValid() {
		nd.LocalAddr = &net.TCPAddr{IP: from.AsSlice()}
	}
	d := tls.Dialer{NetDialer: nd, Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	s, err := mux.Client(c, mux.Options{Log: log, Timeout: 10 * time.Second})
	if err != nil {
		c.Close()
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	if _, err := s.Ping(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}
