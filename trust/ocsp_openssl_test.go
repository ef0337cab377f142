package trust_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/crypto/ocsp"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/devpki"
	"github.com/tunnel-dev/tunnel/internal/ocsptest"
	"github.com/tunnel-dev/tunnel/server"
	"github.com/tunnel-dev/tunnel/trust"
)

// The tests in this file run against a real OCSP responder, `openssl ocsp`
// (internal/ocsptest), on loopback, reached through the test-only fetch
// allowance (allowLoopback), never by changing the defaults.

func fromKP(kp *devpki.KeyPair) *testCert {
	return &testCert{cert: kp.Cert, key: kp.Key, certPEM: kp.CertPEM, keyPEM: kp.KeyPEM}
}

// ocspLeaf is a leaf template for usage naming the responder url.
func ocspLeaf(cn string, usage x509.ExtKeyUsage, url string) *x509.Certificate {
	tmpl := leafTmpl(cn, usage)
	if url != "" {
		tmpl.OCSPServer = []string{url}
	}
	return tmpl
}

// responderCert is a delegated responder certificate issued by ca: EKU
// id-kp-OCSPSigning unless plain.
func responderCert(t *testing.T, ca *ocsptest.CA, plain bool) *devpki.KeyPair {
	t.Helper()
	eku := x509.ExtKeyUsageOCSPSigning
	if plain {
		eku = x509.ExtKeyUsageClientAuth
	}
	kp, err := devpki.NewLeaf(ca.KeyPair, &x509.Certificate{Subject: pkix.Name{CommonName: "OCSP responder"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{eku}}, devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

// ocspServer is a TLS server config for material from ca, checking client
// certificates by OCSP under policy, with its checker (started, closed at
// the end) and log.
func ocspServer(t *testing.T, ca *ocsptest.CA, policy trust.RevocationPolicy) (*tls.Config, *trust.RevocationChecker, *logtest.Hook) {
	t.Helper()
	srvCert := ca.IssueUnlisted(t, ocspLeaf("server.test", x509.ExtKeyUsageServerAuth, ""), devpki.Options{})
	m := material(t, fromKP(srvCert), fromKP(ca.KeyPair))
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	store := trust.NewStore(m)
	rc := trust.NewRevocationChecker(policy, store, logger)
	rc.Start(context.Background())
	t.Cleanup(rc.Close)
	return trust.ServerConfig(store, []string{trust.ALPNTunnel}, trust.WithRevocation(rc)), rc, hook
}

// ocspClient is the config of a client holding leaf, trusting ca.
func ocspClient(t *testing.T, ca *ocsptest.CA, leaf *devpki.KeyPair, opts ...trust.ConfigOption) *tls.Config {
	t.Helper()
	m := material(t, fromKP(leaf), fromKP(ca.KeyPair))
	return trust.ClientConfig(trust.NewStore(m), "server.test", []string{trust.ALPNTunnel}, opts...)
}

func ocspPolicy(method string, failClosed bool) trust.RevocationPolicy {
	p := trust.DefaultRevocationPolicy()
	p.Method = method
	p.DenyOnUnavailable = failClosed
	p.BootstrapTimeout = 5 * time.Second
	return p
}

// eventReasons returns the reasons of the log entries with event ev.
func eventReasons(h *logtest.Hook, ev string) []string {
	var out []string
	for _, e := range h.AllEntries() {
		if e.Data[audit.Event] == ev {
			r, _ := e.Data[audit.Reason].(string)
			out = append(out, r)
		}
	}
	return out
}

// Client certificates checked by OCSP against openssl: good, revoked and
// unknown statuses, a response signed by the wrong key, by a delegated
// responder without id-kp-OCSPSigning, and a responder that is down, each
// in both policies; and a delegated responder that is authorised.
func TestOCSPClientCertificates(t *testing.T) {
	allowLoopback(t)
	ca := ocsptest.NewCA(t, "OCSP Test CA")
	other := ocsptest.NewCA(t, "Another CA")
	byCA := ca.StartResponder(t, ocsptest.ResponderConfig{})
	delegated := ca.StartResponder(t, ocsptest.ResponderConfig{Signer: responderCert(t, ca, false)})
	wrongKey := ca.StartResponder(t, ocsptest.ResponderConfig{Signer: responderCert(t, other, false)})
	noEKU := ca.StartResponder(t, ocsptest.ResponderConfig{Signer: responderCert(t, ca, true)})
	down := ca.StartResponder(t, ocsptest.ResponderConfig{})
	down.Stop()

	good := ca.Issue(t, ocspLeaf("good", x509.ExtKeyUsageClientAuth, byCA.URL), devpki.Options{})
	revoked := ca.Issue(t, ocspLeaf("revoked", x509.ExtKeyUsageClientAuth, byCA.URL), devpki.Options{})
	ca.Revoke(t, revoked.Cert)
	unknown := ca.IssueUnlisted(t, ocspLeaf("unknown", x509.ExtKeyUsageClientAuth, byCA.URL), devpki.Options{})
	viaDelegated := ca.Issue(t, ocspLeaf("delegated", x509.ExtKeyUsageClientAuth, delegated.URL), devpki.Options{})
	viaWrongKey := ca.Issue(t, ocspLeaf("wrong-key", x509.ExtKeyUsageClientAuth, wrongKey.URL), devpki.Options{})
	viaNoEKU := ca.Issue(t, ocspLeaf("no-eku", x509.ExtKeyUsageClientAuth, noEKU.URL), devpki.Options{})
	viaDown := ca.Issue(t, ocspLeaf("down", x509.ExtKeyUsageClientAuth, down.URL), devpki.Options{})

	tests := []struct {
		name       string
		leaf       *devpki.KeyPair
		open       string // the handshake's outcome fail-open: "" admitted, else the reason
		closed     string // and fail-closed
		logReason  string // the ocsp_unavailable reason, if one is logged
		fetchEvent string // the OCSP store's line for the fetch
	}{
		{"good", good, "", "", "", audit.OCSPRefreshed},
		{"revoked", revoked, trust.ReasonRevoked, trust.ReasonRevoked, "", audit.OCSPRefreshed},
		{"unknown", unknown, "", trust.ReasonOCSPUnavailable, trust.ReasonOCSPUnknown, audit.OCSPRefreshed},
		{"delegated responder", viaDelegated, "", "", "", audit.OCSPRefreshed},
		{"wrong signer", viaWrongKey, "", trust.ReasonOCSPUnavailable, trust.ReasonOCSPBadSignature, audit.OCSPFetchFailed},
		{"responder without id-kp-OCSPSigning", viaNoEKU, "", trust.ReasonOCSPUnavailable, trust.ReasonOCSPBadSignature, audit.OCSPFetchFailed},
		{"responder down", viaDown, "", trust.ReasonOCSPUnavailable, trust.ReasonOCSPFailed, audit.OCSPFetchFailed},
	}
	for _, tt := range tests {
		for _, failClosed := range []bool{false, true} {
			want := tt.open
			if failClosed {
				want = tt.closed
			}
			srv, rc, hook := ocspServer(t, ca, ocspPolicy(trust.RevocationOCSP, failClosed))
			got := func() string {
				s, _ := handshake(t, srv, ocspClient(t, ca, tt.leaf))
				return trust.FailureReason(s.err)
			}
			first := got()
			if !failClosed && first == "" {
				// Fail-open does not wait: the first handshake may pass
				// before the response arrives (a revoked one too, on a
				// loaded machine). Wait for the fetch, then judge the
				// next handshake on it.
				waitUntil(10*time.Second, func() bool { return hasEvent(hook, tt.fetchEvent) })
			}
			second := got()
			if second != want || failClosed && first != want {
				t.Errorf("%s (fail-closed %v): handshakes %q then %q, want %q", tt.name, failClosed, first, second, want)
			}
			if !hasEvent(hook, tt.fetchEvent) {
				t.Errorf("%s (fail-closed %v): no %s line", tt.name, failClosed, tt.fetchEvent)
			}
			if tt.logReason != "" {
				if rs := eventReasons(hook, audit.OCSPUnavailable); !slices.Contains(rs, tt.logReason) {
					t.Errorf("%s (fail-closed %v): ocsp_unavailable reasons %q, want %q among them", tt.name, failClosed, rs, tt.logReason)
				}
			}
			if st := rc.Stats(); st.OCSP.FetchesOK+st.OCSP.FetchesFailed == 0 {
				t.Errorf("%s: the OCSP store counted no fetch: %+v", tt.name, st.OCSP)
			}
		}
	}
}

// prefer-ocsp falls back to CRLs when the responder gives no answer, and
// both refuses a certificate either source revokes.
func TestOCSPMethods(t *testing.T) {
	allowLoopback(t)
	ca := ocsptest.NewCA(t, "OCSP Methods CA")
	resp := ca.StartResponder(t, ocsptest.ResponderConfig{})
	down := ca.StartResponder(t, ocsptest.ResponderConfig{})
	down.Stop()
	good := ca.Issue(t, ocspLeaf("good", x509.ExtKeyUsageClientAuth, resp.URL), devpki.Options{})
	viaDown := ca.Issue(t, ocspLeaf("down", x509.ExtKeyUsageClientAuth, down.URL), devpki.Options{})
	// A CRL file that revokes good: OCSP says good, the CRL says revoked.
	crl := crlRevoking(t, ca, good.Cert)

	tests := []struct {
		method string
		leaf   *devpki.KeyPair
		crl    bool
		want   string
	}{
		{trust.RevocationOCSP, good, true, ""},                                    // CRLs are not looked at
		{trust.RevocationBoth, good, true, trust.ReasonRevoked},                   // the CRL revokes it
		{trust.RevocationPreferOCSP, good, true, ""},                              // OCSP answered good
		{trust.RevocationPreferOCSP, viaDown, false, trust.ReasonOCSPUnavailable}, // no answer, no CRL
		{trust.RevocationCRL, good, true, trust.ReasonRevoked},
	}
	for _, tt := range tests {
		p := ocspPolicy(tt.method, true)
		srvCert := ca.IssueUnlisted(t, ocspLeaf("server.test", x509.ExtKeyUsageServerAuth, ""), devpki.Options{})
		src := sources(t, fromKP(srvCert), nil, fromKP(ca.KeyPair))
		if tt.crl {
			src.CRLFiles = []string{writeFile(t, t.TempDir(), "ca.crl", crl)}
		}
		m, err := trust.Load(src)
		if err != nil {
			t.Fatal(err)
		}
		store := trust.NewStore(m)
		logger, hook := logtest.NewNullLogger()
		logger.SetLevel(logrus.DebugLevel)
		rc := trust.NewRevocationChecker(p, store, logger)
		rc.Start(context.Background())
		defer func() {
			if t.Failed() {
				for _, e := range hook.AllEntries() {
					t.Log(e.Message, e.Data)
				}
			}
		}()
		s, _ := handshake(t, trust.ServerConfig(store, nil, trust.WithRevocation(rc)), ocspClient(t, ca, tt.leaf))
		if tt.method != trust.RevocationCRL {
			// Let the OCSP fetch end before Close cancels it: openssl
			// serves one connection at a time, and an aborted request can
			// hold it up for the next row.
			waitUntil(10*time.Second, func() bool { st := rc.Stats().OCSP; return st.FetchesOK+st.FetchesFailed > 0 })
		}
		rc.Close()
		if got := trust.FailureReason(s.err); got != tt.want {
			t.Errorf("method %s, leaf %s, CRL %v: %q (%v), want %q", tt.method, tt.leaf.Cert.Subject.CommonName, tt.crl, got, s.err, tt.want)
		}
	}
	// The fallback itself: prefer-ocsp with the responder down and a CRL
	// file that does not list the leaf admits it on the CRL.
	clean := crlRevoking(t, ca, nil)
	srvCert := ca.IssueUnlisted(t, ocspLeaf("server.test", x509.ExtKeyUsageServerAuth, ""), devpki.Options{})
	src := sources(t, fromKP(srvCert), nil, fromKP(ca.KeyPair))
	src.CRLFiles = []string{writeFile(t, t.TempDir(), "ca.crl", clean)}
	m, err := trust.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	store := trust.NewStore(m)
	rc := trust.NewRevocationChecker(ocspPolicy(trust.RevocationPreferOCSP, true), store, nil)
	rc.Start(context.Background())
	defer rc.Close()
	if s, _ := handshake(t, trust.ServerConfig(store, nil, trust.WithRevocation(rc)), ocspClient(t, ca, viaDown)); s.err != nil {
		t.Errorf("prefer-ocsp, responder down, clean CRL: %v", s.err)
	}
}

// crlRevoking returns a PEM CRL signed by ca that lists c (or nothing).
func crlRevoking(t *testing.T, ca *ocsptest.CA, c *x509.Certificate) []byte {
	t.Helper()
	tmpl := &x509.RevocationList{Number: big.NewInt(time.Now().UnixNano()), ThisUpdate: time.Now().Add(-time.Minute),
		NextUpdate: time.Now().Add(time.Hour)}
	if c != nil {
		tmpl.RevokedCertificateEntries = []x509.RevocationListEntry{{SerialNumber: c.SerialNumber, RevocationTime: time.Now().Add(-time.Minute)}}
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}

// A revocation that arrives while a session is live closes it: the
// responder's index changes, the next refresh brings "revoked", and the
// server's re-check (RevocationCheck, as the binary wires OnUpdate) closes
// the session mid-transfer; the redial is refused.
func TestOCSPRevocationClosesLiveSession(t *testing.T) {
	allowLoopback(t)
	ca := ocsptest.NewCA(t, "OCSP Live CA")
	resp := ca.StartResponder(t, ocsptest.ResponderConfig{Signer: responderCert(t, ca, false)})
	srvCert := ca.IssueUnlisted(t, ocspLeaf("server.test", x509.ExtKeyUsageServerAuth, ""), devpki.Options{})
	app := ca.Issue(t, ocspLeaf("app", x509.ExtKeyUsageClientAuth, resp.URL), devpki.Options{})
	store := trust.NewStore(material(t, fromKP(srvCert), fromKP(ca.KeyPair)))
	rc := trust.NewRevocationChecker(ocspPolicy(trust.RevocationOCSP, true), store, nil)
	rc.Start(context.Background())
	t.Cleanup(rc.Close)
	ts := startTunnelServer(t, store, nil, trust.WithRevocation(rc))
	rc.OnUpdate(func() { ts.srv.Recheck(audit.SessionRevoked, server.RevocationCheck(rc)) })
	cliStore := trust.NewStore(material(t, fromKP(app), fromKP(ca.KeyPair)))
	tc := startTunnelClient(t, ts.addr, func() *tls.Config {
		return trust.ClientConfig(cliStore, "server.test", []string{trust.ALPNTunnel})
	})
	if err := waitRoundTrip(tc.local, 256<<10, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	live := startLive(t, tc.local)
	time.Sleep(200 * time.Millisecond)
	ca.Revoke(t, app.Cert)
	start := time.Now()
	rc.Refresh() // what SIGHUP and POST /crl/refresh do; otherwise the refresh before nextUpdate
	if !waitEvent(ts.log, audit.SessionRevoked, trust.ReasonRevoked, 20*time.Second) {
		t.Fatalf("the revoked client's session was not closed\n%s", resp.Log())
	}
	t.Logf("session closed (session_revoked, revoked) %v after the refresh", time.Since(start).Round(time.Millisecond))
	if n, intact, _ := live.finish(); intact {
		t.Errorf("the transfer went on (%d bytes) after the revocation", n)
	}
	if err := dialVerdict(ts.addr, trust.ClientConfig(cliStore, "server.test", []string{trust.ALPNTunnel})); err == nil {
		t.Error("the revoked client's redial was admitted")
	}
}

// An expired response is not used: openssl's response, valid one minute,
// checked two minutes on. A response echoing another nonce is refused too.
func TestOCSPResponseChecks(t *testing.T) {
	ca := ocsptest.NewCA(t, "OCSP Checks CA")
	resp := ca.StartResponder(t, ocsptest.ResponderConfig{Validity: time.Minute})
	leaf := ca.Issue(t, ocspLeaf("app", x509.ExtKeyUsageClientAuth, resp.URL), devpki.Options{})
	der := opensslQuery(t, ca, leaf, resp.URL, true)
	now := time.Now()
	if st, err := trust.VerifyOCSP(der, leaf.Cert, ca.Cert, nil, now); err != nil || st.Status != ocsp.Good {
		t.Fatalf("fresh response: %v, %v", st, err)
	}
	_, err := trust.VerifyOCSP(der, leaf.Cert, ca.Cert, nil, now.Add(2*time.Minute))
	var re *trust.OCSPResponseError
	if !errors.As(err, &re) || re.Reason != trust.ReasonOCSPExpired {
		t.Errorf("two minutes on: %v, want %s", err, trust.ReasonOCSPExpired)
	}
	// openssl echoes the nonce of its request; another nonce is refused.
	_, err = trust.VerifyOCSP(der, leaf.Cert, ca.Cert, []byte("not the request's nonce"), now)
	if !errors.As(err, &re) || re.Reason != trust.ReasonOCSPNonceMismatch {
		t.Errorf("wrong nonce: %v, want %s", err, trust.ReasonOCSPNonceMismatch)
	}
	// The response is for leaf: for another certificate of the same CA it
	// does not verify.
	other := ca.Issue(t, ocspLeaf("other", x509.ExtKeyUsageClientAuth, resp.URL), devpki.Options{})
	if _, err := trust.VerifyOCSP(der, other.Cert, ca.Cert, nil, now); err == nil {
		t.Error("a response for one certificate verified for another")
	}
}

// opensslQuery asks the responder about leaf with the openssl client and
// returns the DER response (with a nonce unless noNonce is false).
func opensslQuery(t *testing.T, ca *ocsptest.CA, leaf *devpki.KeyPair, url string, nonce bool) []byte {
	t.Helper()
	dir := t.TempDir()
	leafPath := filepath.Join(dir, "leaf.pem")
	if err := os.WriteFile(leafPath, leaf.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "resp.der")
	args := []string{"ocsp", "-issuer", ca.CertPath, "-cert", leafPath, "-url", url, "-respout", out, "-noverify"}
	if !nonce {
		args = append(args, "-no_nonce")
	}
	if b, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
		t.Fatalf("openssl ocsp client: %v\n%s", err, b)
	}
	der, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// mustStapleExt is the TLS feature extension with status_request.
func mustStapleExt(t *testing.T) pkix.Extension {
	v, err := asn1.Marshal([]int{5})
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 24}, Value: v}
}

// The server staples its own status, fetched from openssl, and a client
// that requires a staple gets in; without a stapler it is refused, and a
// must-staple server certificate needs a staple even when the client does
// not ask for one. A staple from a file works too; a revoked staple is
// refused by the client.
func TestOCSPStapling(t *testing.T) {
	allowLoopback(t)
	ca := ocsptest.NewCA(t, "OCSP Staple CA")
	resp := ca.StartResponder(t, ocsptest.ResponderConfig{})
	app := ca.Issue(t, ocspLeaf("app", x509.ExtKeyUsageClientAuth, ""), devpki.Options{})
	plainSrv := ca.Issue(t, ocspLeaf("server.test", x509.ExtKeyUsageServerAuth, resp.URL), devpki.Options{})
	mustTmpl := ocspLeaf("server.test", x509.ExtKeyUsageServerAuth, resp.URL)
	mustTmpl.ExtraExtensions = []pkix.Extension{mustStapleExt(t)}
	mustSrv := ca.Issue(t, mustTmpl, devpki.Options{})

	serve := func(kp *devpki.KeyPair, st *trust.Stapler) *tls.Config {
		store := trust.NewStore(material(t, fromKP(kp), fromKP(ca.KeyPair)))
		return trust.ServerConfig(store, []string{trust.ALPNTunnel}, trust.WithStapler(st))
	}
	stapler := func(kp *devpki.KeyPair, file string) (*trust.Stapler, *trust.Store) {
		store := trust.NewStore(material(t, fromKP(kp), fromKP(ca.KeyPair)))
		st, err := trust.NewStapler(context.Background(), trust.StaplerConfig{Store: store, File: file})
		if err != nil {
			t.Fatal(err)
		}
		st.Start()
		t.Cleanup(st.Close)
		return st, store
	}
	clientOut := func(srv *tls.Config, opts ...trust.ConfigOption) (string, tls.ConnectionState) {
		_, c := handshake(t, srv, ocspClient(t, ca, app, opts...))
		return trust.FailureReason(c.err), c.state
	}

	fetched, store := stapler(plainSrv, "")
	if !fetched.Status().Have {
		t.Fatalf("no staple after NewStapler: %+v\n%s", fetched.Status(), resp.Log())
	}
	srvFetched := trust.ServerConfig(store, []string{trust.ALPNTunnel}, trust.WithStapler(fetched))
	if r, cs := clientOut(srvFetched, trust.WithRequireOCSPStaple()); r != "" || len(cs.OCSPResponse) == 0 {
		t.Errorf("required staple, stapling server: %q, staple %d bytes", r, len(cs.OCSPResponse))
	}
	if r, _ := clientOut(serve(plainSrv, nil), trust.WithRequireOCSPStaple()); r != trust.ReasonStapleMissing {
		t.Errorf("required staple, server without: %q, want %q", r, trust.ReasonStapleMissing)
	}
	if r, _ := clientOut(serve(plainSrv, nil)); r != "" {
		t.Errorf("no staple asked, none given: %q", r)
	}
	if r, _ := clientOut(serve(mustSrv, nil)); r != trust.ReasonStapleMissing {
		t.Errorf("must-staple server without a staple: %q, want %q", r, trust.ReasonStapleMissing)
	}
	mustStapler, mustStore := stapler(mustSrv, "")
	if r, _ := clientOut(trust.ServerConfig(mustStore, []string{trust.ALPNTunnel}, trust.WithStapler(mustStapler))); r != "" {
		t.Errorf("must-staple server with its staple: %q", r)
	}

	// From a file, as an operator whose responder the fetcher may not reach
	// would provide it.
	file := filepath.Join(t.TempDir(), "staple.der")
	if err := os.WriteFile(file, opensslQuery(t, ca, plainSrv, resp.URL, false), 0o600); err != nil {
		t.Fatal(err)
	}
	fromFile, fileStore := stapler(plainSrv, file)
	if r, cs := clientOut(trust.ServerConfig(fileStore, []string{trust.ALPNTunnel}, trust.WithStapler(fromFile)), trust.WithRequireOCSPStaple()); r != "" || len(cs.OCSPResponse) == 0 {
		t.Errorf("staple from a file: %q", r)
	}
	// A file for another certificate is refused at start.
	other := ca.Issue(t, ocspLeaf("server.test", x509.ExtKeyUsageServerAuth, resp.URL), devpki.Options{})
	if _, err := trust.NewStapler(context.Background(), trust.StaplerConfig{
		Store: trust.NewStore(material(t, fromKP(other), fromKP(ca.KeyPair))), File: file}); err == nil {
		t.Error("a staple file for another certificate was accepted")
	}

	// A revoked status stapled by a server that does not check its own.
	ca.Revoke(t, plainSrv.Cert)
	revokedDER := opensslQuery(t, ca, plainSrv, resp.URL, false)
	raw := serve(plainSrv, nil).Clone()
	m := material(t, fromKP(plainSrv), fromKP(ca.KeyPair))
	cert := m.Certificate
	cert.OCSPStaple = revokedDER
	raw.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert}, nil
	}
	if r, _ := clientOut(raw); r != trust.ReasonRevoked {
		t.Errorf("revoked staple: %q, want %q", r, trust.ReasonRevoked)
	}
	// And the stapler does not staple a revoked status: its renewal fails
	// and the previous (good) one stays until it expires.
	fetched.Refresh()
	if !waitUntil(10*time.Second, func() bool { return fetched.Status().LastError != nil }) {
		t.Errorf("stapler renewed a revoked status: %+v", fetched.Status())
	} else if err := fetched.Status().LastError; !strings.Contains(err.Error(), "revoked") {
		t.Errorf("stapler error %v does not say revoked", err)
	}
}
