package e2e

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// bundlePKI is a root, an intermediate under it that issues the client
// leaves, and a server certificate under the root. The server's --ca holds
// the root and the intermediate; the leaves are written alone, without the
// intermediate, so the server can only find it in its bundle. Go makes
// every bundle certificate a root, so verified chains end at the
// intermediate: what issue 14 found unchecked.
type bundlePKI struct {
	dir                   string
	root, inter           *ca
	rootFile, bundleFile  string // root alone; root and intermediate
	serverCert, serverKey string
}

func newBundlePKI(t *testing.T, interCDP ...string) *bundlePKI {
	t.Helper()
	p := &bundlePKI{dir: t.TempDir()}
	p.root = issueCert(t, caTemplate("e2e Bundle Root"), nil)
	it := caTemplate("e2e Bundle Intermediate")
	it.CRLDistributionPoints = interCDP
	p.inter = issueCert(t, it, p.root)
	p.rootFile = filepath.Join(p.dir, "root.pem")
	p.bundleFile = filepath.Join(p.dir, "bundle.pem")
	writeFileAtomic(t, p.rootFile, certPEM(p.root))
	writeFileAtomic(t, p.bundleFile, certPEM(p.root, p.inter))
	srv := issueCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "e2e server"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, p.root)
	p.serverCert, p.serverKey = filepath.Join(p.dir, "server.pem"), filepath.Join(p.dir, "server-key.pem")
	writeFileAtomic(t, p.serverCert, certPEM(srv))
	writeFileAtomic(t, p.serverKey, keyPEM(t, srv))
	return p
}

// leaf issues a client certificate named cn under the intermediate, after
// mod, and writes it without its chain unless withChain.
func (p *bundlePKI) leaf(t *testing.T, cn string, withChain bool, mod func(*x509.Certificate)) leafFiles {
	t.Helper()
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if mod != nil {
		mod(tmpl)
	}
	l := issueCert(t, tmpl, p.inter)
	f := leafFiles{cert: filepath.Join(p.dir, cn+".pem"), key: filepath.Join(p.dir, cn+"-key.pem"), serial: l.cert.SerialNumber}
	chain := certPEM(l)
	if withChain {
		chain = certPEM(l, p.inter)
	}
	writeFileAtomic(t, f.cert, chain)
	writeFileAtomic(t, f.key, keyPEM(t, l))
	return f
}

// server starts a server trusting the bundle, with an echo route.
func (p *bundlePKI) server(t *testing.T, echo string, extra ...string) *proc {
	t.Helper()
	return startProc(t, append(p.serverArgs(echo), extra...)...)
}

// client starts a client of leaf l against srv (the server's certificate
// is under the root).
func (p *bundlePKI) client(t *testing.T, srv string, l leafFiles) *proc {
	t.Helper()
	return startProc(t, "client", "--server", srv, "--server-name", "localhost", "--cert", l.cert, "--key", l.key,
		"--ca", p.rootFile, "--forward", "127.0.0.1:0=echo", "--connect-timeout", "10s",
		"--log-format", "json", "--log-level", "debug")
}

// openStreams opens n streams through the forward at addr, each proven
// open by an echoed byte.
func openStreams(t *testing.T, addr string, n int) []*net.TCPConn {
	t.Helper()
	var out []*net.TCPConn
	for i := range n {
		c := dialLocal(t, addr)
		c.SetDeadline(time.Now().Add(waitTimeout))
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		out = append(out, c)
	}
	return out
}

// waitStreamsClosed waits until the peer closes every stream and returns
// how long after start the last one closed.
func waitStreamsClosed(t *testing.T, streams []*net.TCPConn, start time.Time, d time.Duration) time.Duration {
	t.Helper()
	for i, c := range streams {
		c.SetReadDeadline(time.Now().Add(d))
		if n, err := io.Copy(io.Discard, c); err != nil && isTimeout(err) {
			t.Fatalf("stream %d still open %v after the revocation (read %d bytes)", i, d, n)
		}
	}
	return time.Since(start)
}

// TestBundleIntermediateRevokedByCRLFile: a CRL file from the root that
// revokes the bundle's intermediate refuses every leaf under it, whether or
// not the client sends the intermediate, is logged at start-up as
// ca_revoked, and, when it arrives by a reload, closes the live sessions
// through the intermediate.
func TestBundleIntermediateRevokedByCRLFile(t *testing.T) {
	t.Parallel()
	p := newBundlePKI(t)
	echo := echoBackend(t)
	bare, chained := p.leaf(t, "bare", false, nil), p.leaf(t, "chained", true, nil)

	t.Run("at the handshake", func(t *testing.T) {
		t.Parallel()
		revoked := filepath.Join(p.dir, "root-revokes-inter.crl")
		writeFileAtomic(t, revoked, crl(t, p.root, 0, p.inter.cert.SerialNumber))
		for _, deny := range []bool{false, true} {
			extra := []string{"--crl", revoked}
			if deny {
				extra = append(extra, "--crl-deny-on-unavailable")
			}
			srv := p.server(t, echo, extra...)
			ev := srv.waitEvent(t, waitTimeout, "ca_revoked at start-up", isEvent("ca_revoked"))
			if ev["serial"] != p.inter.cert.SerialNumber.Text(16) || !strings.Contains(ev["subject"].(string), "e2e Bundle Intermediate") {
				t.Errorf("ca_revoked names %v / %v", ev["serial"], ev["subject"])
			}
			// handshake_failed lines are throttled per address, so each
			// client's own refusal is what shows both were tried.
			for _, l := range []leafFiles{bare, chained} {
				c := p.client(t, srv.addr(t), l)
				c.waitEvent(t, waitTimeout, "refused handshake", isEvent("session_failed", "reason", "handshake_peer_alert_bad_certificate"))
			}
			handshakeRefused(t, srv, "revoked")
			if n := len(srv.matching(isEvent("session_opened"))); n != 0 {
				t.Errorf("deny=%v: %d sessions through a revoked intermediate", deny, n)
			}
		}
	})
	t.Run("live session", func(t *testing.T) {
		t.Parallel()
		crlFile := filepath.Join(p.dir, "root.crl")
		writeFileAtomic(t, crlFile, crl(t, p.root, 0))
		srv := p.server(t, echo, "--crl", crlFile)
		cli := p.client(t, srv.addr(t), bare)
		cli.waitEvent(t, waitTimeout, "session", isEvent("session_opened"))
		streams := openStreams(t, cli.forwardAddr(t, "echo"), 5)
		start := time.Now()
		writeFileAtomic(t, crlFile, crl(t, p.root, 0, p.inter.cert.SerialNumber)) // the watcher sees it
		took := waitStreamsClosed(t, streams, start, 10*time.Second)
		t.Logf("5 streams through the revoked bundle intermediate closed %v after its CRL file changed", took.Round(time.Millisecond))
		ev := srv.waitEvent(t, waitTimeout, "session_revoked", isEvent("session_revoked", "reason", "revoked"))
		if ev["identity_cn"] != "bare" {
			t.Errorf("session_revoked names %v", ev["identity_cn"])
		}
		srv.waitEvent(t, waitTimeout, "ca_revoked after the reload", isEvent("ca_revoked"))
		handshakeRefused(t, srv, "revoked") // the client's redial
	})
}

// TestBundleIntermediateRevokedByFetchedCRL: the same through the
// intermediate's Distribution Point: fetched at start-up (the client never
// sends the intermediate), and a refresh that brings a CRL revoking it
// closes the live session through it.
func TestBundleIntermediateRevokedByFetchedCRL(t *testing.T) {
	t.Parallel()
	h := newCRLHTTP(t)
	p := newBundlePKI(t, h.URL+"/root.crl")
	echo := echoBackend(t)
	bare := p.leaf(t, "bare", false, nil)
	h.set(crl(t, p.root, 0))

	srv := p.server(t, echo, "--admin", "127.0.0.1:0", "--crl-deny-on-unavailable")
	srv.waitEvent(t, waitTimeout, "bootstrap fetch of the bundle's CRL", isEvent("crl_refreshed"))
	adminURL := "http://" + srv.adminAddr(t)
	cli := p.client(t, srv.addr(t), bare)
	cli.waitEvent(t, waitTimeout, "session", isEvent("session_opened"))
	streams := openStreams(t, cli.forwardAddr(t, "echo"), 5)

	h.set(crl(t, p.root, 0, p.inter.cert.SerialNumber))
	start := time.Now()
	if code, body := httpDo(t, "POST", adminURL+"/crl/refresh"); code != 202 {
		t.Fatalf("POST /crl/refresh: %d %s", code, body)
	}
	took := waitStreamsClosed(t, streams, start, 10*time.Second)
	t.Logf("5 streams through the revoked bundle intermediate closed %v after POST /crl/refresh", took.Round(time.Millisecond))
	srv.waitEvent(t, waitTimeout, "session_revoked", isEvent("session_revoked", "reason", "revoked", "identity_cn", "bare"))
	srv.waitEvent(t, waitTimeout, "ca_revoked", isEvent("ca_revoked"))
	handshakeRefused(t, srv, "revoked")
	waitMetrics(t, adminURL, "tunnel_ca_revoked 1")

	// A server started with the revoking CRL already published refuses the
	// first handshake.
	srv2 := p.server(t, echo)
	p.client(t, srv2.addr(t), bare)
	handshakeRefused(t, srv2, "revoked")
}

// TestClientBundleIntermediateRevoked: the client checks the intermediates
// of its --ca against their issuer too: a server certificate under a
// revoked intermediate is refused even though the server sends its leaf
// alone.
func TestClientBundleIntermediateRevoked(t *testing.T) {
	t.Parallel()
	p := newBundlePKI(t)
	srvInter := issueCert(t, caTemplate("e2e Server Intermediate"), p.root)
	leaf := issueCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "e2e server"},
		DNSNames: []string{"localhost"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, srvInter)
	cert, key := filepath.Join(p.dir, "srv-inter.pem"), filepath.Join(p.dir, "srv-inter-key.pem")
	writeFileAtomic(t, cert, certPEM(leaf))
	writeFileAtomic(t, key, keyPEM(t, leaf))
	bundle := filepath.Join(p.dir, "client-bundle.pem")
	writeFileAtomic(t, bundle, certPEM(p.root, srvInter))
	crlFile := filepath.Join(p.dir, "root-revokes-srv-inter.crl")
	writeFileAtomic(t, crlFile, crl(t, p.root, 0, srvInter.cert.SerialNumber))

	srv := startProc(t, "server", "--listen", "127.0.0.1:0", "--cert", cert, "--key", key, "--ca", p.rootFile,
		"--allow", "127.0.0.1/32", "--route", "echo="+echoBackend(t), "--log-format", "json")
	c := p.leaf(t, "app", true, nil)
	cli := startProc(t, "client", "--server", srv.addr(t), "--server-name", "localhost", "--cert", c.cert, "--key", c.key,
		"--ca", bundle, "--crl", crlFile, "--forward", "127.0.0.1:0=echo", "--log-format", "json")
	cli.waitEvent(t, waitTimeout, "ca_revoked", isEvent("ca_revoked"))
	cli.waitEvent(t, waitTimeout, "session_failed handshake_revoked", isEvent("session_failed", "reason", "handshake_revoked"))
	if n := len(cli.matching(isEvent("session_opened"))); n != 0 {
		t.Errorf("the client opened %d sessions to a server under a revoked intermediate", n)
	}
}

// TestUncheckedIntermediateWarned: a bundle intermediate whose issuer is
// not in the bundle cannot be checked: one ca_unchecked line at start-up,
// and a warning in tunnel check.
func TestUncheckedIntermediateWarned(t *testing.T) {
	t.Parallel()
	p := newBundlePKI(t)
	interOnly := filepath.Join(p.dir, "inter-only.pem")
	writeFileAtomic(t, interOnly, certPEM(p.inter))
	args := []string{"--listen", "127.0.0.1:0", "--cert", p.serverCert, "--key", p.serverKey, "--ca", interOnly,
		"--allow", "127.0.0.1/32", "--route", "echo=127.0.0.1:9"}
	srv := startProc(t, append([]string{"server", "--log-format", "json"}, args...)...)
	srv.addr(t)
	srv.waitEvent(t, waitTimeout, "ca_unchecked", isEvent("ca_unchecked"))
	if n := len(srv.matching(isEvent("ca_unchecked"))); n != 1 {
		t.Errorf("%d ca_unchecked lines, want 1", n)
	}
	stdout, stderr, code := runTunnel(t, append([]string{"check", "--role", "server"}, args...)...)
	if code != 0 || !strings.Contains(stdout, "warning: --ca: CN=e2e Bundle Intermediate") || !strings.Contains(stdout, "its revocation cannot be checked") {
		t.Errorf("tunnel check: exit %d\n%s%s", code, stdout, stderr)
	}
}
