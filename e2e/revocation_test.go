package e2e

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ca is a certificate with its key, made in the test with crypto/x509.
type ca struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// chainPKI is a root, an intermediate under it, client leaves under the
// intermediate (written with the intermediate as their chain), and a server
// certificate under the root. Both roles trust the root only.
type chainPKI struct {
	dir                   string
	root, inter           *ca
	rootFile              string
	serverCert, serverKey string
	cdp                   []string // CRL Distribution Points of the leaves
}

func newKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// issueCert signs tmpl for a fresh key with parent (self-signed if nil).
func issueCert(t *testing.T, tmpl *x509.Certificate, parent *ca) *ca {
	t.Helper()
	key := newKey(t)
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial.Add(serial, big.NewInt(1))
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, key.Public(), signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &ca{cert: c, key: key}
}

func caTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
}

func certPEM(cs ...*ca) []byte {
	var out []byte
	for _, c := range cs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw})...)
	}
	return out
}

func keyPEM(t *testing.T, c *ca) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(c.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// writeFileAtomic writes data next to path and renames it over path, as
// operators and their tools replace CRL files.
func writeFileAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func newChainPKI(t *testing.T, cdp ...string) *chainPKI {
	t.Helper()
	p := &chainPKI{dir: t.TempDir(), cdp: cdp}
	p.root = issueCert(t, caTemplate("e2e Root"), nil)
	p.inter = issueCert(t, caTemplate("e2e Intermediate"), p.root)
	p.rootFile = filepath.Join(p.dir, "root.pem")
	writeFileAtomic(t, p.rootFile, certPEM(p.root))
	srv := issueCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "e2e server"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, p.root)
	p.serverCert, p.serverKey = filepath.Join(p.dir, "server.pem"), filepath.Join(p.dir, "server-key.pem")
	writeFileAtomic(t, p.serverCert, certPEM(srv))
	writeFileAtomic(t, p.serverKey, keyPEM(t, srv))
	return p
}

// leaf issues a client certificate named cn under the intermediate and
// returns it with its chain and key files.
type leafFiles struct {
	cert, key string
	serial    *big.Int
}

func (p *chainPKI) leaf(t *testing.T, cn string) leafFiles {
	t.Helper()
	l := issueCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: cn}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CRLDistributionPoints: p.cdp}, p.inter)
	f := leafFiles{cert: filepath.Join(p.dir, cn+".pem"), key: filepath.Join(p.dir, cn+"-key.pem"), serial: l.cert.SerialNumber}
	writeFileAtomic(t, f.cert, certPEM(l, p.inter))
	writeFileAtomic(t, f.key, keyPEM(t, l))
	return f
}

// crl returns a PEM CRL signed by issuer revoking serials, valid from an
// hour before now+offset until a day after (the offset moves it in time).
func crl(t *testing.T, issuer *ca, offset time.Duration, serials ...*big.Int) []byte {
	t.Helper()
	now := time.Now().Add(offset)
	tmpl := &x509.RevocationList{Number: big.NewInt(time.Now().UnixNano()), ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(24 * time.Hour)}
	for _, s := range serials {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: s, RevocationTime: time.Now().Add(-time.Minute)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, issuer.cert, issuer.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}

// file writes data into p's directory as name and returns the path.
func (p *chainPKI) file(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	writeFileAtomic(t, path, data)
	return path
}

// server starts a tunnel server of p with an echo route and extra flags.
func (p *chainPKI) server(t *testing.T, echo string, extra ...string) *proc {
	t.Helper()
	args := []string{"server", "--listen", "127.0.0.1:0", "--cert", p.serverCert, "--key", p.serverKey, "--ca", p.rootFile,
		"--allow", "127.0.0.1/32", "--route", "echo=" + echo, "--log-format", "json", "--log-level", "debug"}
	return startProc(t, append(args, extra...)...)
}

// client starts a tunnel client of leaf l against srv with a forward to echo.
func (p *chainPKI) client(t *testing.T, srv string, l leafFiles) *proc {
	t.Helper()
	return startProc(t, "client", "--server", srv, "--server-name", "localhost", "--cert", l.cert, "--key", l.key,
		"--ca", p.rootFile, "--forward", "127.0.0.1:0=echo", "--connect-timeout", "10s",
		"--log-format", "json", "--log-level", "debug")
}

// handshakeRefused waits for the server to refuse a handshake for reason.
func handshakeRefused(t *testing.T, srv *proc, reason string) {
	t.Helper()
	srv.waitEvent(t, waitTimeout, "handshake_failed "+reason, isEvent("handshake_failed", "reason", reason))
}

func TestRevocationFromCRLFiles(t *testing.T) {
	t.Parallel()
	p := newChainPKI(t)
	app1, app2 := p.leaf(t, "app1"), p.leaf(t, "app2")
	echo := echoBackend(t)
	// A forger: the intermediate's name and key identifier, another key.
	forgedTmpl := caTemplate("e2e Intermediate")
	forgedTmpl.SubjectKeyId = p.inter.cert.SubjectKeyId
	forger := issueCert(t, forgedTmpl, nil)

	t.Run("revoked leaf refused, sibling passes", func(t *testing.T) {
		t.Parallel()
		srv := p.server(t, echo, "--crl", p.file(t, "inter-app1.crl", crl(t, p.inter, 0, app1.serial)),
			"--crl", p.file(t, "root-empty.crl", crl(t, p.root, 0)))
		p.client(t, srv.addr(t), app1)
		handshakeRefused(t, srv, "revoked")
		c2 := p.client(t, srv.addr(t), app2)
		c2.waitEvent(t, waitTimeout, "app2 session", isEvent("session_opened"))
		echoCheck(t, c2.forwardAddr(t, "echo"), 1, 1<<20)
		if n := len(srv.matching(isEvent("session_opened", "identity_cn", "app1"))); n != 0 {
			t.Errorf("revoked app1 got %d sessions", n)
		}
	})
	t.Run("revoked intermediate refuses every leaf under it", func(t *testing.T) {
		t.Parallel()
		srv := p.server(t, echo, "--crl", p.file(t, "root-inter.crl", crl(t, p.root, 0, p.inter.cert.SerialNumber)))
		p.client(t, srv.addr(t), app2)
		handshakeRefused(t, srv, "revoked")
	})
	t.Run("CRL from the wrong issuer ignored with a warning", func(t *testing.T) {
		t.Parallel()
		srv := p.server(t, echo, "--crl", p.file(t, "forged.crl", crl(t, forger, 0, app1.serial)))
		c1 := p.client(t, srv.addr(t), app1)
		c1.waitEvent(t, waitTimeout, "app1 session despite the forged CRL", isEvent("session_opened"))
		srv.waitEvent(t, waitTimeout, "crl_rejected", isEvent("crl_rejected"))
	})
	t.Run("expired CRL within the grace period still enforced", func(t *testing.T) {
		t.Parallel()
		srv := p.server(t, echo, "--crl", p.file(t, "stale.crl", crl(t, p.inter, -26*time.Hour, app1.serial)))
		p.client(t, srv.addr(t), app1)
		handshakeRefused(t, srv, "revoked")
	})
}

// crlHTTP serves a swappable CRL on 127.0.0.1 and counts requests.
type crlHTTP struct {
	*httptest.Server
	mu       sync.Mutex
	body     []byte
	requests atomic.Int64
}

func newCRLHTTP(t *testing.T) *crlHTTP {
	t.Helper()
	h := &crlHTTP{}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.requests.Add(1)
		h.mu.Lock()
		body := h.body
		h.mu.Unlock()
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Write(body)
	}))
	t.Cleanup(h.Close)
	return h
}

func (h *crlHTTP) set(body []byte) {
	h.mu.Lock()
	h.body = body
	h.mu.Unlock()
}

func TestRevocationFromDistributionPoint(t *testing.T) {
	t.Parallel()
	h := newCRLHTTP(t)
	p := newChainPKI(t, h.URL+"/inter.crl")
	app1, app2 := p.leaf(t, "app1"), p.leaf(t, "app2")
	h.set(crl(t, p.inter, 0, app1.serial))
	echo := echoBackend(t)

	srv := p.server(t, echo)
	addr := srv.addr(t)
	// The first client brings the Distribution Point to light.
	first := p.client(t, addr, app2)
	first.waitEvent(t, waitTimeout, "app2 session", isEvent("session_opened"))
	srv.waitEvent(t, waitTimeout, "crl_refreshed", isEvent("crl_refreshed"))
	for i := range 4 {
		c := p.client(t, addr, app2)
		c.waitEvent(t, waitTimeout, fmt.Sprintf("app2 session %d", i+2), isEvent("session_opened"))
	}
	p.client(t, addr, app1)
	handshakeRefused(t, srv, "revoked")
	if n := h.requests.Load(); n != 1 {
		t.Errorf("CRL server saw %d requests for 6 handshakes, want 1 (cached)", n)
	}
	echoCheck(t, first.forwardAddr(t, "echo"), 2, 1<<20)
}

func TestRevocationRefreshClosesLiveSession(t *testing.T) {
	t.Parallel()
	h := newCRLHTTP(t)
	p := newChainPKI(t, h.URL+"/inter.crl")
	app1, app2 := p.leaf(t, "app1"), p.leaf(t, "app2")
	h.set(crl(t, p.inter, 0))
	echo := echoBackend(t)
	srv := p.server(t, echo, "--crl-refresh-interval", "1s")
	addr := srv.addr(t)
	c1, c2 := p.client(t, addr, app1), p.client(t, addr, app2)
	c1.waitEvent(t, waitTimeout, "app1 session", isEvent("session_opened"))
	c2.waitEvent(t, waitTimeout, "app2 session", isEvent("session_opened"))
	srv.waitEvent(t, waitTimeout, "first fetch", isEvent("crl_refreshed"))

	h.set(crl(t, p.inter, 0, app1.serial)) // the next refresh brings it
	ev := srv.waitEvent(t, waitTimeout, "session_revoked", isEvent("session_revoked", "reason", "revoked"))
	if ev["identity_cn"] != "app1" {
		t.Errorf("session_revoked names %v, want app1", ev["identity_cn"])
	}
	handshakeRefused(t, srv, "revoked") // app1's redial
	echoCheck(t, c2.forwardAddr(t, "echo"), 3, 1<<20)
	if n := h.requests.Load(); n < 2 {
		t.Errorf("CRL server saw %d requests, want the refresh too", n)
	}
}

func TestRevocationCRLServerDown(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "http://" + ln.Addr().String() + "/inter.crl"
	ln.Close() // connection refused from now on
	p := newChainPKI(t, down)
	app1 := p.leaf(t, "app1")
	echo := echoBackend(t)

	t.Run("fail-open lets the client in with a warning", func(t *testing.T) {
		t.Parallel()
		srv := p.server(t, echo)
		c := p.client(t, srv.addr(t), app1)
		c.waitEvent(t, waitTimeout, "session", isEvent("session_opened"))
		srv.waitEvent(t, waitTimeout, "crl_unavailable", isEvent("crl_unavailable"))
		echoCheck(t, c.forwardAddr(t, "echo"), 4, 1<<16)
	})
	t.Run("fail-closed refuses it", func(t *testing.T) {
		t.Parallel()
		srv := p.server(t, echo, "--crl-deny-on-unavailable")
		p.client(t, srv.addr(t), app1)
		handshakeRefused(t, srv, "crl_unavailable")
		if n := len(srv.matching(isEvent("session_opened"))); n != 0 {
			t.Errorf("%d sessions opened in fail-closed mode", n)
		}
	})
}

// TestRevokedSessionClosedOnCRLFileChange: a client with 10 open streams is
// cut off within a second of its certificate appearing in a replaced CRL
// file; another client's session goes on untouched.
func TestRevokedSessionClosedOnCRLFileChange(t *testing.T) {
	t.Parallel()
	p := newChainPKI(t)
	app1, app2 := p.leaf(t, "app1"), p.leaf(t, "app2")
	crlFile := p.file(t, "inter.crl", crl(t, p.inter, 0))
	echo := echoBackend(t)
	srv := p.server(t, echo, "--crl", crlFile)
	addr := srv.addr(t)
	c1, c2 := p.client(t, addr, app1), p.client(t, addr, app2)
	c1.waitEvent(t, waitTimeout, "app1 session", isEvent("session_opened"))
	c2.waitEvent(t, waitTimeout, "app2 session", isEvent("session_opened"))

	// Ten streams of app1, each proven open with an echoed byte.
	streams := openStreams(t, c1.forwardAddr(t, "echo"), 10)
	other := dialLocal(t, c2.forwardAddr(t, "echo"))

	start := time.Now()
	writeFileAtomic(t, crlFile, crl(t, p.inter, 0, app1.serial)) // the reload watcher sees it; no signal
	elapsed := waitStreamsClosed(t, streams, start, 5*time.Second)
	t.Logf("10 streams of the revoked client closed %v after the CRL file changed", elapsed.Round(time.Millisecond))
	srv.waitEvent(t, waitTimeout, "session_revoked", isEvent("session_revoked", "identity_cn", "app1"))
	// The other client never noticed.
	other.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := other.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(other, make([]byte, 10)); err != nil {
		t.Fatalf("app2's stream after app1's revocation: %v", err)
	}
	if n := len(srv.matching(isEvent("session_revoked", "identity_cn", "app2"))); n != 0 {
		t.Error("app2's session was revoked too")
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
