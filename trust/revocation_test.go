package trust_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/trust"
)

// revPKI is a root, an intermediate under it, and two client leaves under
// the intermediate, plus a server certificate from another CA.
type revPKI struct {
	*pki
	root, inter *testCert
	app1, app2  *testCert
}

func newRevPKI(t *testing.T, cdp ...string) *revPKI {
	t.Helper()
	p := &revPKI{pki: newPKI(t)}
	p.root = newCA(t, "Revocation Root")
	p.inter = newCA(t, "Revocation Intermediate", p.root)
	withCDP := func(c *x509.Certificate) { c.CRLDistributionPoints = cdp }
	p.app1 = newLeaf(t, p.inter, "app1", x509.ExtKeyUsageClientAuth, withCDP)
	p.app2 = newLeaf(t, p.inter, "app2", x509.ExtKeyUsageClientAuth, withCDP)
	return p
}

// server returns the server config trusting root, with crls as CRL files,
// and its checker, which the test closes.
func (p *revPKI) serverWith(t *testing.T, policy trust.RevocationPolicy, log logrus.FieldLogger, crls ...[]byte) (*tls.Config, *trust.RevocationChecker) {
	t.Helper()
	return p.serverBundle(t, policy, log, []*testCert{p.root}, crls...)
}

// client returns the config of a client holding leaf with the intermediate.
func (p *revPKI) client(t *testing.T, leaf *testCert) *tls.Config {
	t.Helper()
	m, err := trust.Load(sources(t, leaf, []*testCert{p.inter}, p.serverCA))
	if err != nil {
		t.Fatal(err)
	}
	return trust.ClientConfig(trust.NewStore(m), "server.test", []string{trust.ALPNTunnel})
}

// outcome is the server's FailureReason of a handshake, "" if it passed.
func (p *revPKI) outcome(t *testing.T, srv *tls.Config, leaf *testCert) string {
	t.Helper()
	s, _ := handshake(t, srv, p.client(t, leaf))
	return trust.FailureReason(s.err)
}

func hasEvent(hook *logtest.Hook, event string) bool {
	for _, e := range hook.AllEntries() {
		if e.Data[audit.Event] == event {
			return true
		}
	}
	return false
}

func TestRevocationFromFiles(t *testing.T) {
	p := newRevPKI(t)
	// A forger: the intermediate's name and key identifier, another key.
	impostor := sign(t, &x509.Certificate{Subject: p.inter.cert.Subject, SubjectKeyId: p.inter.cert.SubjectKeyId,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, newECKey(t), nil)
	stranger := newCA(t, "Revocation Intermediate") // same name, its own key identifier
	now := time.Now()
	revokesApp1 := func(o crlOpts) crlOpts { o.revoked = []*big.Int{p.app1.cert.SerialNumber}; return o }
	def := trust.DefaultRevocationPolicy()
	def.Fetch = false
	with := func(f func(*trust.RevocationPolicy)) trust.RevocationPolicy { pol := def; f(&pol); return pol }
	deny := with(func(pol *trust.RevocationPolicy) { pol.DenyOnUnavailable = true })
	tests := []struct {
		name       string
		policy     trust.RevocationPolicy
		crls       func() [][]byte
		app1, app2 string // expected FailureReason
		event      string // an audit event that must be logged
	}{
		{"revoked leaf refused, sibling passes", def,
			func() [][]byte { return [][]byte{makeCRL(t, p.inter, revokesApp1(crlOpts{}))} }, "revoked", "", ""},
		{"revoked intermediate refuses every leaf", def,
			func() [][]byte {
				return [][]byte{makeCRL(t, p.root, crlOpts{revoked: []*big.Int{p.inter.cert.SerialNumber}}), makeCRL(t, p.inter, crlOpts{})}
			}, "revoked", "revoked", ""},
		{"end-entity-only ignores the intermediate", with(func(pol *trust.RevocationPolicy) { pol.EndEntityOnly = true }),
			func() [][]byte {
				return [][]byte{makeCRL(t, p.root, crlOpts{revoked: []*big.Int{p.inter.cert.SerialNumber}}), makeCRL(t, p.inter, crlOpts{})}
			}, "", "", ""},
		{"CRL from the wrong issuer ignored with a warning (fail-open)", def,
			func() [][]byte { return [][]byte{makeCRL(t, impostor, revokesApp1(crlOpts{}))} }, "", "", audit.CRLRejected},
		{"CRL of another CA with the same name does not apply", deny,
			func() [][]byte { return [][]byte{makeCRL(t, stranger, revokesApp1(crlOpts{}))} }, "", "", ""},
		{"CRL from the wrong issuer, fail-closed", deny,
			func() [][]byte { return [][]byte{makeCRL(t, impostor, revokesApp1(crlOpts{}))} }, "crl_unavailable", "crl_unavailable", audit.CRLUnavailable},
		{"expired CRL within the grace period is enforced", def,
			func() [][]byte {
				return [][]byte{makeCRL(t, p.inter, revokesApp1(crlOpts{thisUpdate: now.Add(-48 * time.Hour), nextUpdate: now.Add(-time.Hour)}))}
			}, "revoked", "", ""},
		{"CRL expired past the grace period is not used (fail-open)", def,
			func() [][]byte {
				return [][]byte{makeCRL(t, p.inter, revokesApp1(crlOpts{thisUpdate: now.Add(-96 * time.Hour), nextUpdate: now.Add(-48 * time.Hour)}))}
			}, "", "", audit.CRLUnavailable},
		{"CRL expired past the grace period, fail-closed", deny,
			func() [][]byte {
				return [][]byte{makeCRL(t, p.inter, revokesApp1(crlOpts{thisUpdate: now.Add(-96 * time.Hour), nextUpdate: now.Add(-48 * time.Hour)}))}
			}, "crl_unavailable", "crl_unavailable", ""},
		{"expiration not enforced", with(func(pol *trust.RevocationPolicy) { pol.EnforceExpiration = false; pol.DenyOnUnavailable = true }),
			func() [][]byte {
				return [][]byte{makeCRL(t, p.inter, revokesApp1(crlOpts{thisUpdate: now.Add(-96 * time.Hour), nextUpdate: now.Add(-48 * time.Hour)}))}
			}, "revoked", "", ""},
		{"CRL from the future is not used", deny,
			func() [][]byte {
				return [][]byte{makeCRL(t, p.inter, revokesApp1(crlOpts{thisUpdate: now.Add(time.Hour), nextUpdate: now.Add(48 * time.Hour)}))}
			}, "crl_unavailable", "crl_unavailable", ""},
		{"disabled", with(func(pol *trust.RevocationPolicy) { pol.Disabled = true }),
			func() [][]byte { return [][]byte{makeCRL(t, p.inter, revokesApp1(crlOpts{}))} }, "", "", audit.RevocationOff},
		{"no CRL and no Distribution Point: nothing to check, even fail-closed", deny,
			func() [][]byte { return nil }, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, hook := logtest.NewNullLogger()
			srv, rc := p.serverWith(t, tt.policy, log, tt.crls()...)
			if got := p.outcome(t, srv, p.app1); got != tt.app1 {
				t.Errorf("app1: %q, want %q", got, tt.app1)
			}
			if got := p.outcome(t, srv, p.app2); got != tt.app2 {
				t.Errorf("app2: %q, want %q", got, tt.app2)
			}
			if tt.event != "" && !hasEvent(hook, tt.event) {
				t.Errorf("no %s event logged", tt.event)
			}
			if tt.app1 == "revoked" && rc.Stats().Revoked == 0 {
				t.Error("Stats().Revoked = 0 after a revoked chain")
			}
		})
	}
}

// crlServer serves a swappable CRL and counts requests.
type crlServer struct {
	*httptest.Server
	mu       sync.Mutex
	body     []byte
	requests atomic.Int64
}

func newCRLServer(t *testing.T) *crlServer {
	t.Helper()
	cs := &crlServer{}
	cs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cs.requests.Add(1)
		cs.mu.Lock()
		body := cs.body
		cs.mu.Unlock()
		if body == nil {
			http.Error(w, "no CRL", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		_, _ = w.Write(body)
	}))
	t.Cleanup(cs.Close)
	return cs
}

func (cs *crlServer) set(body []byte) {
	cs.mu.Lock()
	cs.body = body
	cs.mu.Unlock()
}

// allowLoopback lets this test's fetchers reach 127.0.0.1.
func allowLoopback(t *testing.T) {
	t.Cleanup(trust.SetTestAllowPrefixes(netip.MustParsePrefix("127.0.0.1/32")))
}

// updates returns an OnUpdate hook and a function that waits for the next call.
func updates(t *testing.T, rc *trust.RevocationChecker) (wait func()) {
	ch := make(chan struct{}, 16)
	rc.OnUpdate(func() { ch <- struct{}{} })
	return func() {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatal("no CRL update within 10 s")
		}
	}
}

func TestRevocationFetchedFromDistributionPoint(t *testing.T) {
	allowLoopback(t)
	cs := newCRLServer(t)
	p := newRevPKI(t, cs.URL+"/inter.crl")
	cs.set(makeCRL(t, p.inter, crlOpts{revoked: []*big.Int{p.app1.cert.SerialNumber}}))
	log, hook := logtest.NewNullLogger()
	srv, rc := p.serverWith(t, trust.DefaultRevocationPolicy(), log)
	wait := updates(t, rc)

	// The first handshake brings the Distribution Point to light; fail-open
	// lets it through whatever the fetch's timing.
	p.outcome(t, srv, p.app2)
	wait()
	if got := p.outcome(t, srv, p.app1); got != "revoked" {
		t.Fatalf("app1 after the fetch: %q, want revoked", got)
	}
	for range 10 {
		if got := p.outcome(t, srv, p.app2); got != "" {
			t.Fatalf("app2: %q", got)
		}
	}
	if n := cs.requests.Load(); n != 1 {
		t.Errorf("CRL server saw %d requests for 11 handshakes, want 1 (cached)", n)
	}
	if !hasEvent(hook, audit.CRLRefreshed) {
		t.Error("no crl_refreshed logged")
	}

	// A new CRL that also revokes app2 replaces the cached one on refresh.
	cs.set(makeCRL(t, p.inter, crlOpts{revoked: []*big.Int{p.app1.cert.SerialNumber, p.app2.cert.SerialNumber}}))
	rc.Refresh()
	wait()
	if got := p.outcome(t, srv, p.app2); got != "revoked" {
		t.Errorf("app2 after refresh: %q, want revoked", got)
	}
	if n := cs.requests.Load(); n != 2 {
		t.Errorf("CRL server saw %d requests, want 2", n)
	}
}

func TestRevocationRefreshInterval(t *testing.T) {
	allowLoopback(t)
	cs := newCRLServer(t)
	p := newRevPKI(t, cs.URL+"/inter.crl")
	cs.set(makeCRL(t, p.inter, crlOpts{}))
	pol := trust.DefaultRevocationPolicy()
	pol.RefreshInterval = 100 * time.Millisecond
	srv, rc := p.serverWith(t, pol, nil)
	wait := updates(t, rc)
	p.outcome(t, srv, p.app1)
	wait()
	cs.set(makeCRL(t, p.inter, crlOpts{revoked: []*big.Int{p.app1.cert.SerialNumber}}))
	wait() // the refresh interval brings the new CRL without a Refresh call
	if got := p.outcome(t, srv, p.app1); got != "revoked" {
		t.Errorf("app1 after the scheduled refresh: %q, want revoked", got)
	}
}

func TestRevocationFailClosedWaitsForFirstFetch(t *testing.T) {
	allowLoopback(t)
	cs := newCRLServer(t)
	p := newRevPKI(t, cs.URL+"/inter.crl")
	cs.set(makeCRL(t, p.inter, crlOpts{revoked: []*big.Int{p.app1.cert.SerialNumber}}))
	pol := trust.DefaultRevocationPolicy()
	pol.DenyOnUnavailable = true
	srv, _ := p.serverWith(t, pol, nil)
	// No handshake before: the very first one must wait for the fetch rather
	// than refuse a valid client or admit a revoked one.
	if got := p.outcome(t, srv, p.app2); got != "" {
		t.Errorf("app2 on the first handshake: %q, want accepted", got)
	}
	if got := p.outcome(t, srv, p.app1); got != "revoked" {
		t.Errorf("app1: %q, want revoked", got)
	}
}

func TestRevocationServerDown(t *testing.T) {
	allowLoopback(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String() + "/inter.crl"
	ln.Close() // nothing listens there now: connection refused
	p := newRevPKI(t, url)
	for _, tt := range []struct {
		deny bool
		want string
	}{{false, ""}, {true, "crl_unavailable"}} {
		log, hook := logtest.NewNullLogger()
		pol := trust.DefaultRevocationPolicy()
		pol.DenyOnUnavailable = tt.deny
		srv, _ := p.serverWith(t, pol, log)
		p.outcome(t, srv, p.app1) // discovers; the fetch fails
		time.Sleep(50 * time.Millisecond)
		if got := p.outcome(t, srv, p.app1); got != tt.want {
			t.Errorf("deny=%v: %q, want %q", tt.deny, got, tt.want)
		}
		if !hasEvent(hook, audit.CRLUnavailable) || !hasEvent(hook, audit.CRLFetchFailed) {
			t.Errorf("deny=%v: crl_unavailable and crl_fetch_failed not both logged", tt.deny)
		}
	}
}

func TestRevocationBootstrapFetchesCAChain(t *testing.T) {
	allowLoopback(t)
	cs := newCRLServer(t)
	root := newCA(t, "Bootstrap Root")
	inter := sign(t, &x509.Certificate{Subject: newCA(t, "x").cert.Subject, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, CRLDistributionPoints: []string{cs.URL + "/root.crl"}}, newECKey(t), root)
	cs.set(makeCRL(t, root, crlOpts{}))
	p := newPKI(t)
	src := sources(t, p.server, nil, root, inter)
	m, err := trust.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	rc := trust.NewRevocationChecker(trust.DefaultRevocationPolicy(), trust.NewStore(m), nil)
	defer rc.Close()
	rc.Start(context.Background()) // returns once the bootstrap fetch is done
	if st := rc.Stats().Store; st.Cached != 1 || cs.requests.Load() != 1 {
		t.Errorf("after Start: %d cached, %d requests; want the CA chain's CRL fetched once", st.Cached, cs.requests.Load())
	}
}

// TestRevokedForRecheck: the re-check of live sessions finds revoked chains
// and never waits for a fetch, even in fail-closed mode.
func TestRevokedForRecheck(t *testing.T) {
	allowLoopback(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Accepts and never answers: a fetch from it would hang.
	defer ln.Close()
	p := newRevPKI(t, "http://"+ln.Addr().String()+"/slow.crl")
	pol := trust.DefaultRevocationPolicy()
	pol.DenyOnUnavailable = true
	src := sources(t, p.server, nil, p.root)
	src.CRLFiles = []string{writeFile(t, filepath.Dir(src.CAFile), "inter.crl", crlPEM(makeCRL(t, p.inter, crlOpts{revoked: []*big.Int{p.app1.cert.SerialNumber}})))}
	m, err := trust.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	rc := trust.NewRevocationChecker(pol, trust.NewStore(m), nil)
	defer rc.Close()
	rc.Start(context.Background())
	chain := func(l *testCert) [][]*x509.Certificate {
		return [][]*x509.Certificate{{l.cert, p.inter.cert, p.root.cert}}
	}
	start := time.Now()
	if re := rc.Revoked(chain(p.app1)); re == nil || re.Serial != p.app1.cert.SerialNumber.Text(16) || re.Depth != 0 {
		t.Errorf("app1: %+v, want revoked at depth 0 with its serial", re)
	}
	if re := rc.Revoked(chain(p.app2)); re != nil {
		t.Errorf("app2: %v", re)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Revoked took %v: it must not wait for fetches", d)
	}
}

// serverBundle returns the server config trusting the CA bundle cas, with
// crls as CRL files, and its started checker, which the test closes.
func (p *revPKI) serverBundle(t *testing.T, policy trust.RevocationPolicy, log logrus.FieldLogger, cas []*testCert, crls ...[]byte) (*tls.Config, *trust.RevocationChecker) {
	t.Helper()
	src := sources(t, p.server, nil, cas...)
	for i, c := range crls {
		src.CRLFiles = append(src.CRLFiles, writeFile(t, filepath.Dir(src.CAFile), "crl"+string(rune('a'+i))+".pem", crlPEM(c)))
	}
	m, err := trust.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	store := trust.NewStore(m)
	rc := trust.NewRevocationChecker(policy, store, log)
	t.Cleanup(rc.Close)
	rc.Start(context.Background())
	return trust.ServerConfig(store, []string{trust.ALPNTunnel}, trust.WithRevocation(rc)), rc
}

// outcomeBare is outcome for a client that presents its leaf alone.
func (p *revPKI) outcomeBare(t *testing.T, srv *tls.Config, leaf *testCert) string {
	t.Helper()
	m, err := trust.Load(sources(t, leaf, nil, p.serverCA))
	if err != nil {
		t.Fatal(err)
	}
	s, _ := handshake(t, srv, trust.ClientConfig(trust.NewStore(m), "server.test", []string{trust.ALPNTunnel}))
	return trust.FailureReason(s.err)
}

// TestRevocationBundleIntermediate: an intermediate in the CA bundle is a
// root to crypto/x509, so verified chains end at it. It is checked against
// its issuer's CRL all the same, whether the client sends it or not, from a
// CRL file or from its Distribution Point, at the handshake and for live
// sessions (Revoked).
func TestRevocationBundleIntermediate(t *testing.T) {
	allowLoopback(t)
	p := newRevPKI(t)
	bundle := []*testCert{p.root, p.inter}
	revokesInter := func() []byte { return makeCRL(t, p.root, crlOpts{revoked: []*big.Int{p.inter.cert.SerialNumber}}) }
	def := trust.DefaultRevocationPolicy()

	t.Run("CRL file", func(t *testing.T) {
		log, hook := logtest.NewNullLogger()
		srv, rc := p.serverBundle(t, def, log, bundle, revokesInter())
		if got := p.outcomeBare(t, srv, p.app1); got != "revoked" {
			t.Errorf("leaf alone: %q, want revoked", got)
		}
		if got := p.outcome(t, srv, p.app2); got != "revoked" {
			t.Errorf("leaf with the intermediate: %q, want revoked", got)
		}
		if !hasEvent(hook, audit.CARevoked) || rc.Stats().CARevoked != 1 {
			t.Errorf("ca_revoked logged %v, CARevoked = %d; want both at start-up", hasEvent(hook, audit.CARevoked), rc.Stats().CARevoked)
		}
		// A live session's chain as crypto/x509 builds it: it ends at the
		// intermediate of the bundle.
		re := rc.Revoked([][]*x509.Certificate{{p.app1.cert, p.inter.cert}})
		if re == nil || re.Depth != 1 || re.Serial != p.inter.cert.SerialNumber.Text(16) {
			t.Errorf("Revoked(leaf, bundle intermediate) = %+v, want the intermediate at depth 1", re)
		}
	})
	t.Run("CRL file, end-entity only", func(t *testing.T) {
		pol := def
		pol.EndEntityOnly = true
		srv, _ := p.serverBundle(t, pol, nil, bundle, revokesInter())
		if got := p.outcomeBare(t, srv, p.app1); got != "" {
			t.Errorf("leaf alone: %q, want accepted (only leaves are checked)", got)
		}
	})
	t.Run("no CRL: the sibling root passes", func(t *testing.T) {
		srv, rc := p.serverBundle(t, def, nil, bundle, makeCRL(t, p.root, crlOpts{}))
		if got := p.outcomeBare(t, srv, p.app1); got != "" {
			t.Errorf("leaf alone: %q, want accepted", got)
		}
		if rc.Stats().CARevoked != 0 {
			t.Error("CARevoked != 0 with an empty root CRL")
		}
	})
	t.Run("fetched from the intermediate's Distribution Point", func(t *testing.T) {
		cs := newCRLServer(t)
		cs.set(makeCRL(t, p.root, crlOpts{}))
		inter := sign(t, &x509.Certificate{Subject: p.inter.cert.Subject, IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, CRLDistributionPoints: []string{cs.URL + "/root.crl"}}, p.inter.key, p.root)
		log, hook := logtest.NewNullLogger()
		srv, rc := p.serverBundle(t, def, log, []*testCert{p.root, inter})
		wait := updates(t, rc)
		if got := p.outcomeBare(t, srv, p.app1); got != "" {
			t.Fatalf("before the revocation: %q, want accepted", got)
		}
		live := [][]*x509.Certificate{{p.app1.cert, inter.cert}}
		if re := rc.Revoked(live); re != nil {
			t.Fatalf("Revoked before the revocation: %v", re)
		}
		cs.set(makeCRL(t, p.root, crlOpts{revoked: []*big.Int{inter.cert.SerialNumber}}))
		rc.Refresh()
		wait()
		if got := p.outcomeBare(t, srv, p.app1); got != "revoked" {
			t.Errorf("after the refresh: %q, want revoked", got)
		}
		if re := rc.Revoked(live); re == nil || re.Depth != 1 {
			t.Errorf("Revoked after the refresh = %v, want the intermediate", re)
		}
		if !hasEvent(hook, audit.CARevoked) || rc.Stats().CARevoked != 1 {
			t.Error("no ca_revoked after the refresh brought the CRL")
		}
	})
	t.Run("issuer not in the bundle", func(t *testing.T) {
		log, hook := logtest.NewNullLogger()
		srv, _ := p.serverBundle(t, def, log, []*testCert{p.inter})
		if got := p.outcomeBare(t, srv, p.app1); got != "" {
			t.Errorf("leaf alone: %q, want accepted (nothing can be checked)", got)
		}
		m := material(t, p.server, p.inter)
		if un := m.UncheckedCAs(); len(un) != 1 || !un[0].Equal(p.inter.cert) {
			t.Errorf("UncheckedCAs = %v, want the intermediate", un)
		}
		n := 0
		for _, e := range hook.AllEntries() {
			if e.Data[audit.Event] == audit.CAUnchecked {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d ca_unchecked lines at start-up, want 1", n)
		}
	})
}

// TestRevocationUnusableDistributionPoints: a certificate whose only
// Distribution Point cannot be used has no usable CRL: refused in
// fail-closed mode, admitted with crl_unavailable in fail-open mode. Never
// "nothing to check".
func TestRevocationUnusableDistributionPoints(t *testing.T) {
	for _, tt := range []struct {
		name, dp, reason string
		fetch            bool
	}{
		{"ldap", "ldap://ldap.example/cn=CRL,o=corp?certificateRevocationList", trust.ReasonSchemeNotFetched, true},
		{"file", "file:///etc/pki/inter.crl", trust.ReasonSchemeNotFetched, true},
		{"hex IP literal", "http://0x7f000001/inter.crl", trust.ReasonURLRefused, true},
		{"trailing-dot localhost", "http://localhost.:8080/inter.crl", trust.ReasonURLRefused, true},
		{"private IP literal", "http://10.1.2.3/inter.crl", trust.ReasonURLRefused, true},
		{"metadata IP literal", "http://169.254.169.254/inter.crl", trust.ReasonURLRefused, true},
		{"userinfo", "http://user@crl.example/inter.crl", trust.ReasonURLRefused, true},
		{"fetching off", "http://crl.example/inter.crl", trust.ReasonFetchDisabled, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := newRevPKI(t, tt.dp)
			for _, deny := range []bool{false, true} {
				pol := trust.DefaultRevocationPolicy()
				pol.Fetch, pol.DenyOnUnavailable = tt.fetch, deny
				log, hook := logtest.NewNullLogger()
				srv, rc := p.serverWith(t, pol, log)
				want := ""
				if deny {
					want = "crl_unavailable"
				}
				if got := p.outcome(t, srv, p.app1); got != want {
					t.Errorf("deny=%v: %q, want %q", deny, got, want)
				}
				if rc.Stats().Unavailable == 0 {
					t.Errorf("deny=%v: not counted as crl_unavailable", deny)
				}
				found := false
				for _, e := range hook.AllEntries() {
					if e.Data[audit.Event] == audit.CRLUnavailable && e.Data[audit.Reason] == tt.reason && e.Data[audit.Serial] != nil {
						found = true
					}
				}
				if !found {
					t.Errorf("deny=%v: no crl_unavailable line with reason %s", deny, tt.reason)
				}
			}
		})
	}
	// A usable CRL file for the issuer is enough, whatever the
	// Distribution Points.
	p := newRevPKI(t, "ldap://ldap.example/cn=crl")
	pol := trust.DefaultRevocationPolicy()
	pol.DenyOnUnavailable = true
	srv, _ := p.serverWith(t, pol, nil, makeCRL(t, p.inter, crlOpts{revoked: []*big.Int{p.app1.cert.SerialNumber}}))
	if got := p.outcome(t, srv, p.app2); got != "" {
		t.Errorf("app2 with an ldap DP and a CRL file: %q, want accepted", got)
	}
	if got := p.outcome(t, srv, p.app1); got != "revoked" {
		t.Errorf("app1 with an ldap DP and a CRL file: %q, want revoked", got)
	}
}

// TestRevokedRegistersNothing: re-checking live sessions never tracks a
// Distribution Point, so a store with more URLs in use than fit does not
// fetch, update and re-check round and round.
func TestRevokedRegistersNothing(t *testing.T) {
	p := newRevPKI(t, "http://crl.example/inter.crl")
	m := material(t, p.server, p.root)
	rc := trust.NewRevocationChecker(trust.DefaultRevocationPolicy(), trust.NewStore(m), nil)
	defer rc.Close()
	if re := rc.Revoked([][]*x509.Certificate{{p.app1.cert, p.inter.cert, p.root.cert}}); re != nil {
		t.Fatal(re)
	}
	if st := rc.Stats().Store; st.Tracked != 0 {
		t.Errorf("Revoked tracked %d URLs, want 0", st.Tracked)
	}
}
