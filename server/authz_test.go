package server

import (
	"crypto/x509"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/devpki"
	"github.com/tunnel-dev/tunnel/internal/wire"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/trust"
)

func TestParseIdentityRule(t *testing.T) {
	tests := []struct {
		in, want string // want "" means an error
	}{
		{"cn:app1", "cn:app1"},
		{" CN : app1 ", "cn:app1"},
		{"ou:payments", "ou:payments"},
		{"dns:*.batch.corp", "dns:*.batch.corp"},
		{"dns:Host.Corp.", "dns:host.corp"},
		{"uri:spiffe://corp/payments/*", "uri:spiffe://corp/payments/*"},
		{"uri:spiffe://corp/svc-*/x", "uri:spiffe://corp/svc-*/x"},
		{"ip:10.1.2.3", "ip:10.1.2.3/32"},
		{"ip:10.1.2.3/16", "ip:10.1.0.0/16"},
		{"ip:::ffff:10.1.2.3", "ip:10.1.2.3/32"},
		{"sha256:" + strings.Repeat("AB:", 31) + "AB", "sha256:" + strings.Repeat("ab", 32)},
		{"app1", ""},
		{"cn:", ""},
		{"cn:app*", ""},
		{"ou:*", ""},
		{"dns:a*.corp", ""},
		{"dns:a..corp", ""},
		{"uri:spiffe://*/x", ""},
		{"uri:spiffe://corp/a*b", ""},
		{"uri:corp/payments/*", ""},
		{"uri:spiffe://corp/a/../*", ""},
		{"uri:spiffe://corp/./x", ""},
		{"uri:spiffe://corp/a%*", ""},
		{"uri:spiffe://corp/a%2*", ""},
		{"uri:spiffe://corp/a%2Fb/*", "uri:spiffe://corp/a%2Fb/*"},
		{"dns:a_b.corp", ""},
		{"dns:-a.corp", ""},
		{"dns:a b.corp", ""},
		{"dns:" + strings.Repeat("a", 64) + ".corp", ""},
		{"dns:" + strings.Repeat("a.", 127) + "corp", ""},
		{"ip:10.0.0.300", ""},
		{"ip:fe80::1%eth0", ""},
		{"sha256:abcd", ""},
		{"email:a@b", ""},
		{"spiffe-td:example.org", "spiffe-td:example.org"},
		{"spiffe-td:spiffe://example.org", "spiffe-td:example.org"},
		{"spiffe-td:Example.org", ""},
		{"spiffe-td:example.org/path", ""},
		{"spiffe-td:exa mple.org", ""},
	}
	for _, tt := range tests {
		r, err := ParseIdentityRule(tt.in)
		switch {
		case tt.want == "" && err == nil:
			t.Errorf("ParseIdentityRule(%q) = %v, want an error", tt.in, r)
		case tt.want != "" && err != nil:
			t.Errorf("ParseIdentityRule(%q): %v", tt.in, err)
		case tt.want != "" && r.String() != tt.want:
			t.Errorf("ParseIdentityRule(%q) = %q, want %q", tt.in, r.String(), tt.want)
		}
	}
}

// Wildcards match one DNS label or the rest of one URI path segment, never
// across a dot or a slash.
func TestIdentityRuleMatches(t *testing.T) {
	fp := strings.Repeat("0f", 32)
	id := func(mut func(*trust.Identity)) trust.Identity {
		var i trust.Identity
		mut(&i)
		return i
	}
	tests := []struct {
		rule string
		id   trust.Identity
		want bool
	}{
		{"cn:app1", id(func(i *trust.Identity) { i.CommonName = "app1" }), true},
		{"cn:app1", id(func(i *trust.Identity) { i.CommonName = "app10" }), false},
		{"cn:app1", id(func(i *trust.Identity) { i.CommonName = "App1" }), false},
		{"ou:payments", id(func(i *trust.Identity) { i.OrgUnits = []string{"ops", "payments"} }), true},
		{"ou:payments", id(func(i *trust.Identity) { i.OrgUnits = []string{"payments-eu"} }), false},
		{"dns:*.batch.corp", id(func(i *trust.Identity) { i.DNSNames = []string{"a.batch.corp"} }), true},
		{"dns:*.batch.corp", id(func(i *trust.Identity) { i.DNSNames = []string{"A.Batch.Corp."} }), true},
		{"dns:*.batch.corp", id(func(i *trust.Identity) { i.DNSNames = []string{"a.b.batch.corp"} }), false},
		{"dns:*.batch.corp", id(func(i *trust.Identity) { i.DNSNames = []string{"batch.corp"} }), false},
		{"dns:*.batch.corp", id(func(i *trust.Identity) { i.DNSNames = []string{".batch.corp"} }), false},
		{"dns:*.batch.corp", id(func(i *trust.Identity) { i.DNSNames = []string{"abatch.corp"} }), false},
		{"dns:*.*.corp", id(func(i *trust.Identity) { i.DNSNames = []string{"x", "a.b.corp"} }), true},
		{"dns:host.corp", id(func(i *trust.Identity) { i.CommonName = "host.corp" }), false},
		{"uri:spiffe://corp/payments/*", id(func(i *trust.Identity) { i.URIs = []string{"spiffe://corp/payments/api"} }), true},
		{"uri:spiffe://corp/payments/*", id(func(i *trust.Identity) { i.URIs = []string{"spiffe://corp/payments/api/v2"} }), false},
		{"uri:spiffe://corp/payments/*", id(func(i *trust.Identity) { i.URIs = []string{"spiffe://corp/payments/"} }), false},
		{"uri:spiffe://corp/payments/*", id(func(i *trust.Identity) { i.URIs = []string{"spiffe://corp/payments"} }), false},
		{"uri:spiffe://corp/payments/*", id(func(i *trust.Identity) { i.URIs = []string{"spiffe://corp/payments/a?b=/c"} }), false},
		{"uri:spiffe://corp/payments/*", id(func(i *trust.Identity) { i.URIs = []string{"spiffe://corp.evil/payments/api"} }), false},
		{"uri:spiffe://corp/svc-*", id(func(i *trust.Identity) { i.URIs = []string{"spiffe://corp/svc-a"} }), true},
		{"uri:spiffe://corp/svc-*", id(func(i *trust.Identity) { i.URIs = []string{"spiffe://corp/svc-a/b"} }), false},
		{"uri:spiffe://corp/*/api", id(func(i *trust.Identity) { i.URIs = []string{"spiffe://corp/pay/api"} }), true},
		{"uri:spiffe://corp/*/api", id(func(i *trust.Identity) { i.URIs = []string{"spiffe://corp/pay/eu/api"} }), false},
		{"ip:10.1.0.0/16", id(func(i *trust.Identity) { i.IPs = []string{"10.1.2.3"} }), true},
		{"ip:10.1.0.0/16", id(func(i *trust.Identity) { i.IPs = []string{"10.2.2.3"} }), false},
		{"ip:10.1.2.3", id(func(i *trust.Identity) { i.IPs = []string{"::ffff:10.1.2.3"} }), true},
		{"sha256:" + fp, id(func(i *trust.Identity) { i.Fingerprint = fp }), true},
		{"sha256:" + strings.ToUpper(fp), id(func(i *trust.Identity) { i.Fingerprint = fp }), true},
		{"sha256:" + fp, id(func(i *trust.Identity) { i.Fingerprint = strings.Repeat("0e", 32) }), false},
	}
	for _, tt := range tests {
		r, err := ParseIdentityRule(tt.rule)
		if err != nil {
			t.Fatalf("ParseIdentityRule(%q): %v", tt.rule, err)
		}
		if got := r.Matches(tt.id); got != tt.want {
			t.Errorf("%q.Matches(%+v) = %v, want %v", tt.rule, tt.id, got, tt.want)
		}
	}
	if (IdentityRule{}).Matches(trust.Identity{}) {
		t.Error("the zero IdentityRule matched")
	}
}

func TestAccessDecide(t *testing.T) {
	allow, err := netfilter.ParseAllowlist([]string{"10.1.0.0/16"})
	if err != nil {
		t.Fatal(err)
	}
	app1 := mustRule(t, "cn:app1")
	peer := func(addr, cn string) Peer {
		return Peer{Addr: netip.MustParseAddr(addr), Identity: trust.Identity{CommonName: cn}}
	}
	tests := []struct {
		name string
		a    *Access
		p    Peer
		want string
	}{
		{"nil admits all", nil, peer("192.0.2.1", "x"), ""},
		{"empty admits all", &Access{}, peer("192.0.2.1", "x"), ""},
		{"identity ok", &Access{Identities: []IdentityRule{app1}}, peer("192.0.2.1", "app1"), ""},
		{"identity refused", &Access{Identities: []IdentityRule{app1}}, peer("192.0.2.1", "app2"), ReasonIdentityNotAllowed},
		{"address ok", &Access{Allow: allow}, peer("10.1.9.9", "x"), ""},
		{"address refused", &Access{Allow: allow}, peer("10.2.0.1", "x"), ReasonIPNotAllowed},
		{"both needed", &Access{Identities: []IdentityRule{app1}, Allow: allow}, peer("10.2.0.1", "app1"), ReasonIPNotAllowed},
		{"two CNs, the rule names the last", &Access{Identities: []IdentityRule{app1}}, withID(peer("192.0.2.1", "app1"), func(i *trust.Identity) {
			i.CommonNames = []string{"admin", "app1"}
		}), ReasonMultipleCNs},
		{"two CNs, the rule names the first", &Access{Identities: []IdentityRule{app1}}, withID(peer("192.0.2.1", "admin"), func(i *trust.Identity) {
			i.CommonNames = []string{"app1", "admin"}
		}), ReasonMultipleCNs},
		{"two CNs, another rule decides", &Access{Identities: []IdentityRule{app1, mustRule(t, "dns:app1.corp")}}, withID(peer("192.0.2.1", "app1"), func(i *trust.Identity) {
			i.CommonNames, i.DNSNames = []string{"admin", "app1"}, []string{"app1.corp"}
		}), ""},
		{"two CNs, neither named", &Access{Identities: []IdentityRule{app1}}, withID(peer("192.0.2.1", "b"), func(i *trust.Identity) {
			i.CommonNames = []string{"a", "b"}
		}), ReasonIdentityNotAllowed},
		{"constrained CA, CN only", &Access{Identities: []IdentityRule{app1}}, withID(peer("192.0.2.1", "app1"), func(i *trust.Identity) {
			i.NameConstrained = true
		}), ReasonCNUnconstrained},
		{"constrained CA, a governed SAN", &Access{Identities: []IdentityRule{app1}}, withID(peer("192.0.2.1", "app1"), func(i *trust.Identity) {
			i.NameConstrained, i.ConstrainedSAN = true, true
		}), ""},
	}
	for _, tt := range tests {
		if got := tt.a.Decide(tt.p); got != tt.want {
			t.Errorf("%s: Decide = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func withID(p Peer, mut func(*trust.Identity)) Peer {
	mut(&p.Identity)
	return p
}

func mustRule(t *testing.T, s string) IdentityRule {
	t.Helper()
	r, err := ParseIdentityRule(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// statusOf opens a stream to route and returns the server's status.
func statusOf(t *testing.T, r *running, as testPKI, route string, other bool) wire.Status {
	t.Helper()
	cfg := as.clientTLS
	if other {
		cfg = as.otherTLS
	}
	s := dialSessionAs(t, cfg, r.addr)
	_, err := openRoute(t, s, header(t, route))
	if se, ok := errors.AsType[*wire.StatusError](err); ok {
		return se.Code
	} else if err != nil {
		t.Fatalf("ReadStatus: %v", err)
	}
	return wire.StatusOK
}

// A route's rules give the allowed identity status ok and another status
// forbidden, with an audit line naming identity, route and rule set.
func TestRouteRules(t *testing.T) {
	pki := newTestPKI(t)
	r := startServer(t, pki, func(c *Config) {
		c.Routes[0].Access = &Access{Name: "routes.echo", Identities: []IdentityRule{mustRule(t, "cn:app1")}}
	})
	if got := statusOf(t, r, pki, "echo", false); got != wire.StatusOK {
		t.Errorf("app1 on echo: status %v, want ok", got)
	}
	if got := statusOf(t, r, pki, "echo", true); got != wire.StatusForbidden {
		t.Errorf("app2 on echo: status %v, want forbidden", got)
	}
	// The status goes out before the line is logged: wait for it.
	waitFor(t, 5*time.Second, func() bool {
		for _, e := range r.log.AllEntries() {
			if e.Data["event"] == "stream_refused" && e.Data["status"] == "forbidden" && e.Data["identity_cn"] == "app2" &&
				e.Data["route"] == "echo" && e.Data["rule_set"] == "routes.echo" && e.Data["reason"] == ReasonIdentityNotAllowed {
				return true
			}
		}
		return false
	})
	if got := r.srv.Stats().StreamsRefused["forbidden"]; got != 1 {
		t.Errorf("forbidden streams counted %d, want 1", got)
	}
}

// Reload swaps the routes for new streams and closes the sessions that use
// a route whose new rules refuse them, or that the new material or
// allowlist refuses; a session whose handshake ran under the old material
// is closed right after it.
func TestReload(t *testing.T) {
	pki := newTestPKI(t)
	// The TLS config reads a store of its own, which Reload does not swap:
	// handshakes keep trusting the old CA, as one that began before a
	// reload does.
	old := pki.serverStore.Material()
	r := startServer(t, pki, func(c *Config) {
		c.TLS = pki.serverTLS
		c.Trust = trust.NewStore(old)
	})
	app1 := dialSessionAs(t, pki.clientTLS, r.addr)
	app2 := dialSessionAs(t, pki.otherTLS, r.addr)
	if _, err := openRoute(t, app1, header(t, "echo")); err != nil {
		t.Fatal(err)
	}
	if _, err := openRoute(t, app2, header(t, "echo")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { return r.srv.Stats().SessionsActive == 2 })
	al := r.srv.cfg.Filter.Allowlist()

	// A bad state changes nothing.
	_, err := r.srv.Reload(State{Material: old, Allowlist: al, Routes: []Route{{Name: "a", Target: "x:1"}, {Name: "a", Target: "x:2"}}})
	if fe, ok := errors.AsType[*FieldError](err); !ok || fe.Field != "Routes" {
		t.Fatalf("Reload(duplicate routes) = %v, want a FieldError for Routes", err)
	}
	if _, ok := r.srv.route("echo"); !ok {
		t.Fatal("a rejected Reload changed the routes")
	}

	echo, _ := r.srv.route("echo")
	echo.Access = &Access{Name: "routes.echo", Identities: []IdentityRule{mustRule(t, "cn:app1")}}
	n, err := r.srv.Reload(State{Material: old, Allowlist: al, Routes: []Route{echo}})
	if err != nil || n != 1 {
		t.Fatalf("Reload(echo for app1 only) = %d, %v; want 1 closed", n, err)
	}
	waitFor(t, 5*time.Second, func() bool { return app2.IsClosed() })
	if app1.IsClosed() {
		t.Fatal("Reload closed the session of the identity the rules still allow")
	}
	var logged bool
	for _, e := range r.log.AllEntries() {
		if e.Data["event"] == "session_revoked" && e.Data["identity_cn"] == "app2" && e.Data["route"] == "echo" &&
			e.Data["reason"] == ReasonIdentityNotAllowed && e.Data["rule_set"] == "routes.echo" {
			logged = true
		}
	}
	if !logged {
		t.Error("no session_revoked line with route and rule set for app2")
	}
	// Route "down" was dropped: new streams to it are unknown.
	if _, err := openRoute(t, app1, header(t, "down")); !isStatus(err, wire.StatusUnknownRoute) {
		t.Errorf("stream to a removed route: %v, want unknown_route", err)
	}

	waitFor(t, 5*time.Second, func() bool { return r.srv.Stats().SessionsActive == 1 })
	// A CA bundle without the clients' CA closes the rest, and new sessions
	// that complete their handshake are closed right after it.
	other, err := devpki.NewCA("other CA", devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(other.Cert)
	next := &trust.Material{Certificate: old.Certificate, CAPool: pool, CACerts: []*x509.Certificate{other.Cert}}
	n, err = r.srv.Reload(State{Material: next, Allowlist: al, Routes: []Route{echo}})
	if err != nil || n != 1 {
		t.Fatalf("Reload(CA removed) = %d, %v; want 1 closed", n, err)
	}
	if r.srv.cfg.Trust.Material() != next {
		t.Error("Reload did not swap the material")
	}
	waitFor(t, 5*time.Second, func() bool { return app1.IsClosed() })
	late := dialSessionAs(t, pki.clientTLS, r.addr) // the TLS config still trusts the old CA
	late.Ping()
	waitFor(t, 5*time.Second, func() bool { return late.IsClosed() })

	// An allowlist without the client's address closes a session too, and
	// the Filter refuses new connections by it.
	r.srv.cfg.Trust.Swap(old)
	if _, err := r.srv.Reload(State{Material: old, Allowlist: al, Routes: []Route{echo}}); err != nil {
		t.Fatal(err)
	}
	app1 = dialSessionAs(t, pki.clientTLS, r.addr)
	waitFor(t, 5*time.Second, func() bool { return r.srv.Stats().SessionsActive == 1 })
	elsewhere, err := netfilter.ParseAllowlist([]string{"192.0.2.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := r.srv.Reload(State{Material: old, Allowlist: elsewhere, Routes: []Route{echo}}); err != nil || n != 1 {
		t.Fatalf("Reload(address not allowed) = %d, %v; want 1 closed", n, err)
	}
	waitFor(t, 5*time.Second, func() bool { return app1.IsClosed() })
	if r.srv.cfg.Filter.Allowlist() != elsewhere {
		t.Error("Reload did not swap the allowlist")
	}
}

func isStatus(err error, code wire.Status) bool {
	se, ok := errors.AsType[*wire.StatusError](err)
	return ok && se.Code == code
}

func TestTrustCheckKeepsSameCA(t *testing.T) {
	ca, err := devpki.NewCA("ca", devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := devpki.NewLeaf(ca, &x509.Certificate{
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		// Expired since: a certificate that lapsed during its session is not a removed CA.
		NotBefore: time.Now().Add(-50 * time.Minute), NotAfter: time.Now().Add(-10 * time.Minute),
	}, devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	p := Peer{Chains: [][]*x509.Certificate{{leaf.Cert, ca.Cert}}}
	if got := trustCheck(&trust.Material{CAPool: pool})(p); got != "" {
		t.Errorf("TrustCheck(same CA) = %q, want kept", got)
	}
	if got := trustCheck(&trust.Material{CAPool: x509.NewCertPool()})(p); got != ReasonCARemoved {
		t.Errorf("TrustCheck(no CA) = %q, want %q", got, ReasonCARemoved)
	}
}

// spiffe-td: matches the trust domain of a leaf whose only URI SAN is a
// SPIFFE ID, as trust.IdentityOf reads it from a real certificate.
func TestSPIFFETrustDomainRule(t *testing.T) {
	ca, err := devpki.NewCA("", devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(uris ...string) trust.Identity {
		kp, err := devpki.NewLeaf(ca, &x509.Certificate{KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, devpki.Options{URIs: uris})
		if err != nil {
			t.Fatal(err)
		}
		return trust.IdentityOf(kp.Cert)
	}
	r, err := ParseIdentityRule("spiffe-td:example.org")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		id   trust.Identity
		want bool
	}{
		{"its SPIFFE ID", leaf("spiffe://example.org/payments/api"), true},
		{"another trust domain", leaf("spiffe://example.org.evil/payments/api"), false},
		{"a parent of the trust domain", leaf("spiffe://org/payments"), false},
		{"two URI SANs (not an SVID)", leaf("spiffe://example.org/a", "spiffe://example.org/b"), false},
		{"not a SPIFFE URI", leaf("https://example.org/a"), false},
		{"no URI SAN", leaf(), false},
	}
	for _, tt := range tests {
		if got := r.Matches(tt.id); got != tt.want {
			t.Errorf("%s: spiffe-td:example.org matches %v = %v, want %v", tt.name, tt.id.URIs, got, tt.want)
		}
	}
}
