//go:build pkcs11 && cgo

package trust_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ThalesGroup/crypto11"

	"github.com/tunnel-dev/tunnel/internal/softhsmtest"
	"github.com/tunnel-dev/tunnel/trust"
)

// Keys in a SoftHSM2 token, initialised here: an EC P-256 and an RSA 2048
// key generated in the token, certificates issued for them, and tunnel
// sessions (real TLS 1.3 handshakes, bytes checked by SHA-256) with each key
// on each side; the key never leaves the token (the Signer is crypto11's,
// whose private half is a token handle). A wrong PIN and a missing object
// fail with errors that say so.
func TestPKCS11SoftHSM(t *testing.T) {
	dir, err := os.MkdirTemp("", "softhsm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	tk := softhsmtest.NewToken(t, dir, "tunnel-test", "4711")
	tk.GenerateKey(t, "EC:prime256v1", "ec-key", "01")
	tk.GenerateKey(t, "rsa:2048", "rsa-key", "02")

	ca := newCA(t, "Token CA")
	ecPub, rsaPub := tokenPublic(t, tk, "ec-key"), tokenPublic(t, tk, "rsa-key")
	if _, ok := ecPub.(*ecdsa.PublicKey); !ok {
		t.Fatalf("ec-key is %T", ecPub)
	}
	if _, ok := rsaPub.(*rsa.PublicKey); !ok {
		t.Fatalf("rsa-key is %T", rsaPub)
	}
	// certFor issues a certificate for a token key and returns the sources
	// naming the token key.
	certFor := func(cn string, usage x509.ExtKeyUsage, pub crypto.PublicKey, object string) trust.Sources {
		tmpl := leafTmpl(cn, usage)
		tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter = randSerial(t), time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
		if err != nil {
			t.Fatal(err)
		}
		d := t.TempDir()
		return trust.Sources{
			CertFile: writeFile(t, d, "cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
			KeyFile:  tk.URI(object, tk.PINFile),
			CAFile:   writeFile(t, d, "ca.pem", ca.certPEM),
		}
	}
	load := func(src trust.Sources) *trust.Material {
		t.Helper()
		m, err := trust.Load(src)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := m.Certificate.PrivateKey.(crypto11.Signer); !ok {
			t.Fatalf("the key is a %T, not a token signer", m.Certificate.PrivateKey)
		}
		return m
	}

	// First, before any login: PKCS#11 logs an application in per token,
	// so once a right PIN is in, a wrong one is not asked for again.
	wrongPIN := filepath.Join(dir, "wrong-pin")
	if err := os.WriteFile(wrongPIN, []byte("0000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := certFor("server.test", x509.ExtKeyUsageServerAuth, ecPub, "ec-key")
	src.KeyFile = tk.URI("ec-key", wrongPIN)
	_, err = trust.Load(src)
	if err == nil || !strings.Contains(err.Error(), "wrong PIN") || !strings.Contains(err.Error(), `token "tunnel-test"`) ||
		!strings.Contains(err.Error(), `KeyFile "pkcs11:`) || strings.Contains(err.Error(), "0000") {
		t.Errorf("wrong PIN: %v", err)
	}
	t.Logf("wrong PIN: %v", err)

	for _, tt := range []struct{ server, client string }{{"ec-key", "rsa-key"}, {"rsa-key", "ec-key"}} {
		pubs := map[string]crypto.PublicKey{"ec-key": ecPub, "rsa-key": rsaPub}
		srv := load(certFor("server.test", x509.ExtKeyUsageServerAuth, pubs[tt.server], tt.server))
		cli := load(certFor("app", x509.ExtKeyUsageClientAuth, pubs[tt.client], tt.client))
		ts := startTunnelServer(t, trust.NewStore(srv), nil)
		cliStore := trust.NewStore(cli)
		tc := startTunnelClient(t, ts.addr, func() *tls.Config {
			return trust.ClientConfig(cliStore, "server.test", []string{trust.ALPNTunnel})
		})
		start := time.Now()
		if err := waitRoundTrip(tc.local, 1<<20, 30*time.Second); err != nil {
			t.Fatalf("server key %s, client key %s: %v", tt.server, tt.client, err)
		}
		t.Logf("server key %s, client key %s in the token: 1 MiB echoed, SHA-256 intact (%v with the session set-up)",
			tt.server, tt.client, time.Since(start).Round(time.Millisecond))
		// A raw handshake shows what was negotiated.
		c, err := tls.Dial("tcp", ts.addr, trust.ClientConfig(cliStore, "server.test", []string{trust.ALPNTunnel}))
		if err != nil {
			t.Fatal(err)
		}
		if v := c.ConnectionState().Version; v != tls.VersionTLS13 {
			t.Errorf("TLS version %x, want 1.3 (RSA-PSS in the token)", v)
		}
		c.Close()
	}

	// A reload loads the same token key again (the session is reused).
	load(certFor("server.test", x509.ExtKeyUsageServerAuth, ecPub, "ec-key"))

	src = certFor("server.test", x509.ExtKeyUsageServerAuth, ecPub, "ec-key")
	src.KeyFile = tk.URI("no-such-key", tk.PINFile)
	if _, err := trust.Load(src); err == nil || !strings.Contains(err.Error(), `no private key with object "no-such-key"`) {
		t.Errorf("missing object: %v", err)
	}
	// The certificate of one token key with the other key: a mismatch.
	src = certFor("server.test", x509.ExtKeyUsageServerAuth, ecPub, "rsa-key")
	if _, err := trust.Load(src); err == nil || !strings.Contains(err.Error(), "does not match certificate") {
		t.Errorf("mismatched token key: %v", err)
	}
}

// tokenPublic returns the public key of the token key labelled object.
func tokenPublic(t *testing.T, tk *softhsmtest.Token, object string) crypto.PublicKey {
	t.Helper()
	ctx, err := crypto11.Configure(&crypto11.Config{Path: tk.Module, TokenLabel: tk.Label, Pin: tk.PIN})
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Close()
	s, err := ctx.FindKeyPair(nil, []byte(object))
	if err != nil || s == nil {
		t.Fatalf("FindKeyPair(%s) = %v, %v", object, s, err)
	}
	return s.Public()
}
