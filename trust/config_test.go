package trust_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/trust"
)

func TestServerConfigClientCertificates(t *testing.T) {
	p := newPKI(t)
	otherCA := newCA(t, "other CA")
	now := time.Now()
	client := func(mod func(*x509.Certificate)) func(*testing.T) *testCert {
		return func(t *testing.T) *testCert {
			return newLeaf(t, p.clientCA, "app1", x509.ExtKeyUsageClientAuth, mod)
		}
	}
	tests := []struct {
		name   string
		leaf   func(*testing.T) *testCert // nil: the client presents no certificate
		reason string                     // "" = accepted
	}{
		{name: "valid", leaf: client(nil)},
		{name: "valid with both EKUs", leaf: client(func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		})},
		{name: "expired", reason: "expired_or_not_yet_valid", leaf: client(func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = now.Add(-2*time.Hour), now.Add(-time.Hour)
		})},
		{name: "not yet valid", reason: "expired_or_not_yet_valid", leaf: client(func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = now.Add(time.Hour), now.Add(2*time.Hour)
		})},
		{name: "other CA", reason: "unknown_authority", leaf: func(t *testing.T) *testCert {
			return newLeaf(t, otherCA, "app1", x509.ExtKeyUsageClientAuth, nil)
		}},
		{name: "serverAuth only", reason: "bad_eku", leaf: client(func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		})},
		{name: "no EKU", reason: "bad_eku", leaf: client(func(c *x509.Certificate) {
			c.ExtKeyUsage = nil
		})},
		{name: "any EKU only", reason: "bad_eku", leaf: client(func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
		})},
		{name: "no digitalSignature", reason: "bad_key_usage", leaf: client(func(c *x509.Certificate) {
			c.KeyUsage = x509.KeyUsageKeyAgreement
		})},
		{name: "self-signed", reason: "unknown_authority", leaf: func(t *testing.T) *testCert {
			return newLeaf(t, nil, "app1", x509.ExtKeyUsageClientAuth, nil)
		}},
		{name: "no certificate", reason: "no_client_certificate"},
	}
	for _, tls12 := range []bool{false, true} {
		for _, tt := range tests {
			name := tt.name
			if tls12 {
				name += "/tls1.2"
			}
			t.Run(name, func(t *testing.T) {
				var ccfg *tls.Config
				if tt.leaf == nil {
					ccfg = p.clientConfig(t, newLeaf(t, p.clientCA, "app1", x509.ExtKeyUsageClientAuth, nil))
					ccfg.Certificates, ccfg.GetClientCertificate = nil, nil
				} else {
					ccfg = p.clientConfig(t, tt.leaf(t))
				}
				if tls12 {
					ccfg.MaxVersion = tls.VersionTLS12
				}
				srv, cli := handshake(t, p.serverConfig(t), ccfg)
				if tt.reason == "" {
					if srv.err != nil || cli.err != nil {
						t.Fatalf("handshake: server %v, client %v; want success", srv.err, cli.err)
					}
					id, ok := trust.PeerIdentity(srv.state)
					if !ok || id.CommonName != "app1" {
						t.Errorf("PeerIdentity = %v, %v; want cn app1", id, ok)
					}
					if srv.state.NegotiatedProtocol != trust.ALPNTunnel {
						t.Errorf("NegotiatedProtocol = %q, want %q", srv.state.NegotiatedProtocol, trust.ALPNTunnel)
					}
					return
				}
				if srv.err == nil {
					t.Fatal("server handshake succeeded, want refusal")
				}
				if cli.err == nil {
					t.Error("client saw no error, want refusal")
				}
				if got := trust.FailureReason(srv.err); got != tt.reason {
					t.Errorf("FailureReason(%v) = %q, want %q", srv.err, got, tt.reason)
				}
			})
		}
	}
}

func TestServerConfigRefusalAlertOnClient(t *testing.T) {
	p := newPKI(t)
	tests := []struct {
		name string
		leaf func(*testing.T) *testCert
		want string
	}{
		{name: "unknown CA", want: "peer_alert_unknown_ca", leaf: func(t *testing.T) *testCert {
			return newLeaf(t, newCA(t, "other CA"), "app1", x509.ExtKeyUsageClientAuth, nil)
		}},
		{name: "no EKU", want: "peer_alert_bad_certificate", leaf: func(t *testing.T) *testCert {
			return newLeaf(t, p.clientCA, "app1", x509.ExtKeyUsageClientAuth, func(c *x509.Certificate) { c.ExtKeyUsage = nil })
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, cli := handshake(t, p.serverConfig(t), p.clientConfig(t, tt.leaf(t)))
			if got := trust.FailureReason(cli.err); got != tt.want {
				t.Errorf("client FailureReason(%v) = %q, want %q", cli.err, got, tt.want)
			}
		})
	}
}

func TestServerConfigUsageErrorType(t *testing.T) {
	p := newPKI(t)
	leaf := newLeaf(t, p.clientCA, "app1", x509.ExtKeyUsageClientAuth, func(c *x509.Certificate) { c.ExtKeyUsage = nil })
	srv, _ := handshake(t, p.serverConfig(t), p.clientConfig(t, leaf))
	if ue, ok := errors.AsType[*trust.UsageError](srv.err); !ok || ue.Reason != trust.ReasonBadEKU {
		t.Errorf("server error %v: want *UsageError with reason %q", srv.err, trust.ReasonBadEKU)
	}
}

func TestClientConfigServerCertificates(t *testing.T) {
	p := newPKI(t)
	tests := []struct {
		name       string
		mod        func(*x509.Certificate)
		serverName string
		reason     string
	}{
		{name: "valid", serverName: "server.test"},
		{name: "name mismatch", serverName: "other.test", reason: "name_mismatch"},
		{name: "clientAuth only", serverName: "server.test", reason: "bad_eku", mod: func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}},
		{name: "no EKU", serverName: "server.test", reason: "bad_eku", mod: func(c *x509.Certificate) {
			c.ExtKeyUsage = nil
		}},
		{name: "no digitalSignature", serverName: "server.test", reason: "bad_key_usage", mod: func(c *x509.Certificate) {
			c.KeyUsage = x509.KeyUsageKeyEncipherment
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server := newLeaf(t, p.serverCA, "server.test", x509.ExtKeyUsageServerAuth, tt.mod)
			scfg := trust.ServerConfig(trust.NewStore(material(t, server, p.clientCA)), []string{trust.ALPNTunnel})
			clientLeaf := newLeaf(t, p.clientCA, "app1", x509.ExtKeyUsageClientAuth, nil)
			ccfg := trust.ClientConfig(trust.NewStore(material(t, clientLeaf, p.serverCA)), tt.serverName, []string{trust.ALPNTunnel})
			srv, cli := handshake(t, scfg, ccfg)
			if tt.reason == "" {
				if srv.err != nil || cli.err != nil {
					t.Fatalf("handshake: server %v, client %v; want success", srv.err, cli.err)
				}
				id, ok := trust.PeerIdentity(cli.state)
				if !ok || id.Serial != server.cert.SerialNumber.Text(16) {
					t.Errorf("PeerIdentity = %v, %v; want serial %x", id, ok, server.cert.SerialNumber)
				}
				return
			}
			if cli.err == nil {
				t.Fatal("client handshake succeeded, want refusal")
			}
			if got := trust.FailureReason(cli.err); got != tt.reason {
				t.Errorf("FailureReason(%v) = %q, want %q", cli.err, got, tt.reason)
			}
		})
	}
}

func TestProtocolNegotiation(t *testing.T) {
	p := newPKI(t)
	leaf := newLeaf(t, p.clientCA, "app1", x509.ExtKeyUsageClientAuth, nil)
	tests := []struct {
		name   string
		mod    func(*tls.Config)
		reason string // server side; "" = accepted
	}{
		{name: "tls1.2 ECDHE-GCM", mod: func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}
		}},
		{name: "tls1.2 ChaCha20", mod: func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}
		}},
		{name: "tls1.2 CBC refused", reason: "other", mod: func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}
		}},
		{name: "tls1.1 refused", reason: "protocol_version", mod: func(c *tls.Config) {
			c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
		}},
		{name: "no common ALPN", reason: "no_common_alpn", mod: func(c *tls.Config) {
			c.NextProtos = []string{"h2"}
		}},
		{name: "no ALPN offered", mod: func(c *tls.Config) { c.NextProtos = nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ccfg := p.clientConfig(t, leaf)
			tt.mod(ccfg)
			srv, cli := handshake(t, p.serverConfig(t), ccfg)
			if tt.reason == "" {
				if srv.err != nil || cli.err != nil {
					t.Fatalf("handshake: server %v, client %v; want success", srv.err, cli.err)
				}
				return
			}
			if got := trust.FailureReason(srv.err); got != tt.reason {
				t.Errorf("server FailureReason(%v) = %q, want %q", srv.err, got, tt.reason)
			}
		})
	}
}

func TestServerConfigSwap(t *testing.T) {
	serverCA := newCA(t, "server CA")
	caA, caB := newCA(t, "client CA A"), newCA(t, "client CA B")
	serverA := newLeaf(t, serverCA, "server.test", x509.ExtKeyUsageServerAuth, nil)
	serverB := newLeaf(t, serverCA, "server.test", x509.ExtKeyUsageServerAuth, nil)
	clientA := newLeaf(t, caA, "a", x509.ExtKeyUsageClientAuth, nil)
	clientB := newLeaf(t, caB, "b", x509.ExtKeyUsageClientAuth, nil)

	store := trust.NewStore(material(t, serverA, caA))
	scfg := trust.ServerConfig(store, []string{trust.ALPNTunnel})
	dial := func(t *testing.T, leaf *testCert) (result, result) {
		t.Helper()
		ccfg := trust.ClientConfig(trust.NewStore(material(t, leaf, serverCA)), "server.test", []string{trust.ALPNTunnel})
		return handshake(t, scfg, ccfg)
	}
	expect := func(t *testing.T, leaf, wantServer *testCert, wantReason string) {
		t.Helper()
		srv, cli := dial(t, leaf)
		if wantReason != "" {
			if got := trust.FailureReason(srv.err); got != wantReason {
				t.Fatalf("client %s: server FailureReason(%v) = %q, want %q", leaf.cert.Subject.CommonName, srv.err, got, wantReason)
			}
			return
		}
		if srv.err != nil || cli.err != nil {
			t.Fatalf("client %s: server %v, client %v; want success", leaf.cert.Subject.CommonName, srv.err, cli.err)
		}
		got := cli.state.PeerCertificates[0].SerialNumber
		if got.Cmp(wantServer.cert.SerialNumber) != 0 {
			t.Fatalf("server presented serial %x, want %x", got, wantServer.cert.SerialNumber)
		}
	}
	expect(t, clientA, serverA, "")
	expect(t, clientB, nil, "unknown_authority")

	store.Swap(material(t, serverB, caB))
	expect(t, clientA, nil, "unknown_authority")
	expect(t, clientB, serverB, "")
}

func TestServerConfigNoMaterial(t *testing.T) {
	p := newPKI(t)
	leaf := newLeaf(t, p.clientCA, "app1", x509.ExtKeyUsageClientAuth, nil)
	srv, _ := handshake(t, trust.ServerConfig(trust.NewStore(nil), nil), p.clientConfig(t, leaf))
	if srv.err == nil {
		t.Fatal("handshake with an empty store succeeded")
	}
}

func TestServerConfigChainFile(t *testing.T) {
	root := newCA(t, "root")
	inter := newCA(t, "intermediate", root)
	server := newLeaf(t, inter, "server.test", x509.ExtKeyUsageServerAuth, nil)
	clientCA := newCA(t, "client CA")
	m, err := trust.Load(sources(t, server, []*testCert{inter}, clientCA))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(m.Certificate.Certificate); n != 2 {
		t.Fatalf("chain length = %d, want 2", n)
	}
	if m.Certificate.Leaf.Subject.CommonName != "server.test" {
		t.Fatalf("Leaf CN = %q, want server.test", m.Certificate.Leaf.Subject.CommonName)
	}
	leaf := newLeaf(t, clientCA, "app1", x509.ExtKeyUsageClientAuth, nil)
	ccfg := trust.ClientConfig(trust.NewStore(material(t, leaf, root)), "server.test", nil)
	srv, cli := handshake(t, trust.ServerConfig(trust.NewStore(m), nil), ccfg)
	if srv.err != nil || cli.err != nil {
		t.Fatalf("handshake with a chain: server %v, client %v", srv.err, cli.err)
	}
	if n := len(cli.state.VerifiedChains[0]); n != 3 {
		t.Errorf("verified chain length = %d, want 3", n)
	}
}

func TestClientConfigRequiresServerName(t *testing.T) {
	p := newPKI(t)
	leaf := newLeaf(t, p.clientCA, "app1", x509.ExtKeyUsageClientAuth, nil)
	ccfg := trust.ClientConfig(trust.NewStore(material(t, leaf, p.serverCA)), "", nil)
	_, cli := handshake(t, p.serverConfig(t), ccfg)
	if cli.err == nil {
		t.Fatal("handshake without a server name succeeded")
	}
}

func TestFailureReasonHandshakeErrors(t *testing.T) {
	p := newPKI(t)
	t.Run("not tls", func(t *testing.T) {
		sc, cc := net.Pipe()
		t.Cleanup(func() { sc.Close(); cc.Close() })
		_ = sc.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			_, _ = cc.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
			cc.Close()
		}()
		err := tls.Server(sc, p.serverConfig(t)).Handshake()
		if got := trust.FailureReason(err); got != "not_tls" {
			t.Errorf("FailureReason(%v) = %q, want not_tls", err, got)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		sc, cc := net.Pipe()
		t.Cleanup(func() { sc.Close(); cc.Close() })
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
		defer cancel()
		err := tls.Server(sc, p.serverConfig(t)).HandshakeContext(ctx)
		if got := trust.FailureReason(err); got != "timeout" {
			t.Errorf("FailureReason(%v) = %q, want timeout", err, got)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		sc, cc := net.Pipe()
		t.Cleanup(func() { sc.Close(); cc.Close() })
		_ = sc.SetDeadline(time.Now().Add(20 * time.Millisecond))
		err := tls.Server(sc, p.serverConfig(t)).Handshake()
		if got := trust.FailureReason(err); got != "timeout" {
			t.Errorf("FailureReason(%v) = %q, want timeout", err, got)
		}
	})
	t.Run("eof", func(t *testing.T) {
		sc, cc := net.Pipe()
		t.Cleanup(func() { sc.Close() })
		cc.Close()
		err := tls.Server(sc, p.serverConfig(t)).Handshake()
		if got := trust.FailureReason(err); got != "eof" {
			t.Errorf("FailureReason(%v) = %q, want eof", err, got)
		}
	})
}

func TestServerConfigConcurrentSwap(t *testing.T) {
	p := newPKI(t)
	other := newLeaf(t, p.serverCA, "server.test", x509.ExtKeyUsageServerAuth, nil)
	mats := []*trust.Material{material(t, p.server, p.clientCA), material(t, other, p.clientCA)}
	store := trust.NewStore(mats[0])
	scfg := trust.ServerConfig(store, []string{trust.ALPNTunnel})
	leaf := newLeaf(t, p.clientCA, "app1", x509.ExtKeyUsageClientAuth, nil)
	ccfg := p.clientConfig(t, leaf)

	errs := make(chan error, 4)
	for range 4 {
		go func() {
			for range 5 {
				srv, cli := handshake(t, scfg, ccfg.Clone())
				if srv.err != nil || cli.err != nil {
					errs <- fmt.Errorf("server %v, client %v", srv.err, cli.err)
					return
				}
			}
			errs <- nil
		}()
	}
	for i := range 50 {
		store.Swap(mats[i%2])
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
