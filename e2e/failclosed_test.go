package e2e

import (
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// crlPaths serves a CRL per URL path on 127.0.0.1, 404 for others.
type crlPaths struct {
	*httptest.Server
	mu     sync.Mutex
	bodies map[string][]byte
}

func newCRLPaths(t *testing.T) *crlPaths {
	t.Helper()
	h := &crlPaths{bodies: map[string][]byte{}}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		body, ok := h.bodies[r.URL.Path]
		h.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Write(body)
	}))
	t.Cleanup(h.Close)
	return h
}

// serve publishes body at path and returns its URL.
func (h *crlPaths) serve(path string, body []byte) string {
	h.mu.Lock()
	h.bodies[path] = body
	h.mu.Unlock()
	return h.URL + path
}

// withCDP sets a leaf's Distribution Points.
func withCDP(urls ...string) func(*x509.Certificate) {
	return func(c *x509.Certificate) { c.CRLDistributionPoints = urls }
}

// refusedAs waits for the client to be refused and for the server's
// crl_unavailable line with reason and the leaf's serial.
func refusedAs(t *testing.T, srv, cli *proc, l leafFiles, reason string) {
	t.Helper()
	cli.waitEvent(t, waitTimeout, "refused handshake", isEvent("session_failed", "reason", "handshake_peer_alert_bad_certificate"))
	srv.waitEvent(t, waitTimeout, "crl_unavailable "+reason, isEvent("crl_unavailable", "reason", reason, "serial", l.serial.Text(16)))
}

// TestFailClosedUnusableDistributionPoints: a client whose only
// Distribution Point cannot be used has no usable CRL. Fail-closed refuses
// it; fail-open admits it with a crl_unavailable warning naming the
// reason, and counts it.
func TestFailClosedUnusableDistributionPoints(t *testing.T) {
	t.Parallel()
	p := newBundlePKI(t)
	echo := echoBackend(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String() + "/inter.crl"
	ln.Close() // connection refused from now on
	kinds := []struct{ name, dp, reason string }{
		{"ldap", "ldap://ldap.corp.example/CN=Inter,CN=CDP?certificateRevocationList", "scheme_not_fetched"},
		{"file", "file:///etc/pki/inter.crl", "scheme_not_fetched"},
		{"hex-literal", "http://0x7f000001/inter.crl", "url_refused"},
		{"localhost-dot", "http://localhost.:8080/inter.crl", "url_refused"},
		{"private-literal", "http://10.20.30.40/inter.crl", "url_refused"},
		{"metadata-literal", "http://169.254.169.254/latest/inter.crl", "url_refused"},
		{"userinfo", "http://crl@crl.corp.example/inter.crl", "url_refused"},
		{"failed-fetch", closed, "fetch_failed"},
	}
	leaves := make([]leafFiles, len(kinds))
	for i, k := range kinds {
		leaves[i] = p.leaf(t, k.name, false, withCDP(k.dp))
	}
	t.Run("fail-closed", func(t *testing.T) {
		t.Parallel()
		srv := p.server(t, echo, "--crl-deny-on-unavailable")
		for i, k := range kinds {
			cli := p.client(t, srv.addr(t), leaves[i])
			refusedAs(t, srv, cli, leaves[i], k.reason)
		}
		if n := len(srv.matching(isEvent("session_opened"))); n != 0 {
			t.Errorf("%d sessions opened in fail-closed mode", n)
		}
	})
	t.Run("fail-open", func(t *testing.T) {
		t.Parallel()
		srv := p.server(t, echo, "--admin", "127.0.0.1:0")
		for i, k := range kinds {
			cli := p.client(t, srv.addr(t), leaves[i])
			cli.waitEvent(t, waitTimeout, k.name+" session", isEvent("session_opened"))
			serial := leaves[i].serial.Text(16)
			if k.reason != "fetch_failed" {
				srv.waitEvent(t, waitTimeout, "crl_unavailable "+k.reason, isEvent("crl_unavailable", "reason", k.reason, "serial", serial))
				continue
			}
			// Fail-open does not wait for the first fetch: the check finds
			// it not fetched yet, or, when the refused connection is
			// quicker than the check, failed.
			srv.waitEvent(t, waitTimeout, "crl_unavailable not_fetched_yet or fetch_failed", func(ev map[string]any) bool {
				return isEvent("crl_unavailable", "reason", "not_fetched_yet", "serial", serial)(ev) ||
					isEvent("crl_unavailable", "reason", "fetch_failed", "serial", serial)(ev)
			})
		}
		waitMetrics(t, "http://"+srv.adminAddr(t), fmt.Sprintf("tunnel_crl_unavailable_total %d", len(kinds)))
	})
}

// TestFailClosedCapsFilled: a Distribution Point kept out by a cap is no
// usable CRL, and a full table makes room instead of refusing new URLs for
// good.
func TestFailClosedCapsFilled(t *testing.T) {
	t.Parallel()
	p := newBundlePKI(t)
	h := newCRLPaths(t)
	echo := echoBackend(t)
	empty := crl(t, p.inter, 0)

	// The real cap of 60 new URLs a minute: one certificate with 60
	// Distribution Points uses it up, so the next certificate's new URL
	// is over it. That one serves a CRL that revokes the certificate.
	var sixty []string
	for i := range 60 {
		sixty = append(sixty, h.serve(fmt.Sprintf("/rate/%d.crl", i), empty))
	}
	filler := p.leaf(t, "filler", false, withCDP(sixty...))
	t.Run("new-URL rate, fail-closed", func(t *testing.T) {
		t.Parallel()
		late := p.leaf(t, "late-closed", false, withCDP(h.serve("/rate/late-closed.crl", empty)))
		h.serve("/rate/late-closed.crl", crl(t, p.inter, 0, late.serial)) // it revokes the one certificate that names it
		srv := p.server(t, echo, "--crl-deny-on-unavailable")
		c := p.client(t, srv.addr(t), filler)
		c.waitEvent(t, waitTimeout, "the filler's session", isEvent("session_opened"))
		cli := p.client(t, srv.addr(t), late)
		refusedAs(t, srv, cli, late, "limit_new_urls_per_minute")
		srv.waitEvent(t, waitTimeout, "crl_limit", isEvent("crl_limit", "limit", "new_urls_per_minute"))
	})
	t.Run("new-URL rate, fail-open", func(t *testing.T) {
		t.Parallel()
		late := p.leaf(t, "late-open", false, withCDP(h.serve("/rate/late-open.crl", empty)))
		srv := p.server(t, echo)
		c := p.client(t, srv.addr(t), filler)
		c.waitEvent(t, waitTimeout, "the filler's session", isEvent("session_opened"))
		cli := p.client(t, srv.addr(t), late)
		cli.waitEvent(t, waitTimeout, "late session", isEvent("session_opened"))
		srv.waitEvent(t, waitTimeout, "crl_unavailable", isEvent("crl_unavailable", "reason", "limit_new_urls_per_minute", "serial", late.serial.Text(16)))
	})

	// Test-sized tables (TUNNEL_TEST_CRL_CAPS, test builds only): three
	// tracked URLs, two remembered refused ones.
	caps := []string{"TUNNEL_TEST_CRL_CAPS=cached_crls=3,seen_urls=2"}
	t.Run("tracked URLs age out", func(t *testing.T) {
		t.Parallel()
		srv := startProcEnv(t, caps, append(p.serverArgs(echo), "--crl-deny-on-unavailable")...)
		for i := range 3 {
			l := p.leaf(t, fmt.Sprintf("fill%d", i), false, withCDP(h.serve(fmt.Sprintf("/lru/%d.crl", i), empty)))
			c := p.client(t, srv.addr(t), l)
			c.waitEvent(t, waitTimeout, "filler session", isEvent("session_opened"))
		}
		// A fourth URL evicts the least recently used one and is fetched:
		// its CRL revokes the certificate that brought it.
		r := p.leaf(t, "revoked-after-full", false, withCDP(h.serve("/lru/revoked.crl", empty)))
		h.serve("/lru/revoked.crl", crl(t, p.inter, 0, r.serial))
		p.client(t, srv.addr(t), r)
		handshakeRefused(t, srv, "revoked")
		srv.waitEvent(t, waitTimeout, "eviction", isEvent("crl_limit", "limit", "cached_crls"))
		if n := len(srv.matching(isEvent("session_opened", "identity_cn", "revoked-after-full"))); n != 0 {
			t.Errorf("the revoked certificate got %d sessions", n)
		}
	})
	t.Run("refused URLs age out", func(t *testing.T) {
		t.Parallel()
		srv := startProcEnv(t, caps, append(p.serverArgs(echo), "--crl-deny-on-unavailable")...)
		for i := range 4 {
			l := p.leaf(t, fmt.Sprintf("ldap%d", i), false, withCDP(fmt.Sprintf("ldap://ldap%d.corp.example/cn=crl", i)))
			cli := p.client(t, srv.addr(t), l)
			refusedAs(t, srv, cli, l, "scheme_not_fetched")
		}
		srv.waitEvent(t, waitTimeout, "seen_urls limit", isEvent("crl_limit", "limit", "seen_urls"))
	})
}

// serverArgs are the arguments of p.server.
func (p *bundlePKI) serverArgs(echo string) []string {
	return []string{"server", "--listen", "127.0.0.1:0", "--cert", p.serverCert, "--key", p.serverKey, "--ca", p.bundleFile,
		"--allow", "127.0.0.1/32", "--route", "echo=" + echo, "--log-format", "json", "--log-level", "debug"}
}
