package trust_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/trust"
)

// testCert is a certificate made in a test, with its key and PEM forms.
type testCert struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
	keyPEM  []byte // PKCS#8
}

func newECKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func randSerial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}

// sign creates tmpl with key, signed by parent (self-signed if parent is nil).
func sign(t *testing.T, tmpl *x509.Certificate, key crypto.Signer, parent *testCert) *testCert {
	t.Helper()
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = randSerial(t)
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(time.Hour)
	}
	issuer, issuerKey := tmpl, key
	if parent != nil {
		issuer, issuerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), issuerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &testCert{
		cert:    cert,
		key:     key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
	}
}

// newCA returns a self-signed CA (signed by parent if given: an intermediate).
func newCA(t *testing.T, cn string, parent ...*testCert) *testCert {
	t.Helper()
	var p *testCert
	if len(parent) > 0 {
		p = parent[0]
	}
	return sign(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, newECKey(t), p)
}

// leafTmpl returns a valid leaf template for usage, with DNS name cn.
func leafTmpl(cn string, usage x509.ExtKeyUsage) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		DNSNames:    []string{cn},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
}

// newLeaf signs leafTmpl(cn, usage) by ca after applying mod.
func newLeaf(t *testing.T, ca *testCert, cn string, usage x509.ExtKeyUsage, mod func(*x509.Certificate)) *testCert {
	t.Helper()
	tmpl := leafTmpl(cn, usage)
	if mod != nil {
		mod(tmpl)
	}
	return sign(t, tmpl, newECKey(t), ca)
}

// writeFile writes data to dir/name and returns the path.
func writeFile(t *testing.T, dir, name string, data ...[]byte) string {
	t.Helper()
	var all []byte
	for _, d := range data {
		all = append(all, d...)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, all, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// sources writes leaf (plus chain), its key and the CA bundle to a temp dir.
func sources(t *testing.T, leaf *testCert, chain []*testCert, cas ...*testCert) trust.Sources {
	t.Helper()
	dir := t.TempDir()
	certData := [][]byte{leaf.certPEM}
	for _, c := range chain {
		certData = append(certData, c.certPEM)
	}
	var caData [][]byte
	for _, c := range cas {
		caData = append(caData, c.certPEM)
	}
	return trust.Sources{
		CertFile: writeFile(t, dir, "cert.pem", certData...),
		KeyFile:  writeFile(t, dir, "key.pem", leaf.keyPEM),
		CAFile:   writeFile(t, dir, "ca.pem", caData...),
	}
}

// material loads leaf, its key and the CA bundle cas through files.
func material(t *testing.T, leaf *testCert, cas ...*testCert) *trust.Material {
	t.Helper()
	m, err := trust.Load(sources(t, leaf, nil, cas...))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// result is one side's outcome of a handshake.
type result struct {
	err   error
	state tls.ConnectionState
}

// handshake runs a TLS handshake between a server and a client config over
// net.Pipe. After its handshake the server writes one byte and the client
// reads it, so a client certificate refused after a TLS 1.3 client finished
// its handshake still surfaces on the client side.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) (server, client result) {
	t.Helper()
	sc, cc := net.Pipe()
	deadline := time.Now().Add(10 * time.Second)
	_ = sc.SetDeadline(deadline)
	_ = cc.SetDeadline(deadline)
	done := make(chan result, 1)
	go func() {
		defer sc.Close()
		srv := tls.Server(sc, serverCfg)
		err := srv.HandshakeContext(context.Background())
		if err == nil {
			_, err = srv.Write([]byte{1})
		}
		done <- result{err: err, state: srv.ConnectionState()}
	}()
	cli := tls.Client(cc, clientCfg)
	err := cli.Handshake()
	if err == nil {
		_, err = cli.Read(make([]byte, 1))
	}
	client = result{err: err, state: cli.ConnectionState()}
	cc.Close()
	server = <-done
	return server, client
}

// pki is a server CA, a client CA and a server's material for the usual tests.
type pki struct {
	serverCA, clientCA *testCert
	server             *testCert
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{serverCA: newCA(t, "server CA"), clientCA: newCA(t, "client CA")}
	p.server = newLeaf(t, p.serverCA, "server.test", x509.ExtKeyUsageServerAuth, nil)
	return p
}

// clientConfig returns the client config of a client holding leaf.
func (p *pki) clientConfig(t *testing.T, leaf *testCert) *tls.Config {
	t.Helper()
	return trust.ClientConfig(trust.NewStore(material(t, leaf, p.serverCA)), "server.test", []string{trust.ALPNTunnel})
}

// serverConfig returns the server config of p.server, trusting clientCA.
func (p *pki) serverConfig(t *testing.T) *tls.Config {
	t.Helper()
	return trust.ServerConfig(trust.NewStore(material(t, p.server, p.clientCA)), []string{trust.ALPNTunnel})
}
