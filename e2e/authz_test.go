package e2e

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// identityClient writes a client certificate of pk's CA with the given CN,
// DNS and URI SANs, and starts a client with one forward per route.
func identityClient(t *testing.T, pk *pki, server, cn string, dns []string, uris []string, routes ...string) *proc {
	t.Helper()
	tmpl := clientTmpl(cn)
	tmpl.DNSNames = dns
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	_, certPEM, keyPEM := leafPEM(t, loadCA(t, pk), tmpl)
	dir := t.TempDir()
	cert, key := filepath.Join(dir, cn+".pem"), filepath.Join(dir, cn+"-key.pem")
	for f, b := range map[string][]byte{cert: certPEM, key: keyPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	args := withFlag(withFlag(clientArgs(pk, server, routes...), "--cert", cert), "--key", key)
	p := startProc(t, args...)
	p.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	return p
}

// forbidden checks that a connection to the forward of route is refused
// with status forbidden: the client closes it and logs the status.
func forbidden(t *testing.T, cli *proc, route string) {
	t.Helper()
	before := len(cli.matching(isEvent("stream_refused", "route", route, "status", "forbidden")))
	c := dialLocal(t, cli.forwardAddr(t, route))
	c.Write([]byte("hello"))
	assertClosed(t, c, waitTimeout)
	cli.waitEventN(t, waitTimeout, before+1, "stream_refused forbidden on "+route,
		isEvent("stream_refused", "route", route, "status", "forbidden"))
}

// TestRouteAuthorization: per-route identity rules from the config file.
// The allowed identity gets status ok, another gets forbidden with an audit
// line naming identity, route and rule set, and wildcards do not cross DNS
// labels or URI path segments.
func TestRouteAuthorization(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	echo := echoBackend(t)
	cfg := filepath.Join(t.TempDir(), "server.yaml")
	conf := func(dbRule string) []byte {
		return fmt.Appendf(nil, `listen: 127.0.0.1:0
allow: [127.0.0.1/32]
routes:
  - name: db
    target: %[1]s
    allow_identities: [%[2]q]
  - name: batch
    target: %[1]s
    allow_identities: ["dns:*.batch.corp"]
  - name: payments
    target: %[1]s
    allow_identities: ["uri:spiffe://corp/payments/*", "ou:never"]
  - name: local
    target: %[1]s
    allow: [127.0.0.2/32]
  - name: open
    target: %[1]s
`, echo, dbRule)
	}
	renameInto(t, cfg, conf("cn:app1"))
	args := withoutFlag(withoutFlag(serverArgs(pk, "127.0.0.1:0"), "--allow"), "--listen")
	srv := startProc(t, append(args, "--config", cfg)...)
	addr := srv.addr(t)
	routes := []string{"db", "batch", "payments", "local", "open"}
	clients := map[string]*proc{
		"app1": identityClient(t, pk, addr, "app1", nil, nil, routes...),
		"one":  identityClient(t, pk, addr, "one", []string{"a.batch.corp"}, []string{"spiffe://corp/payments/api"}, routes...),
		"two":  identityClient(t, pk, addr, "two", []string{"a.b.batch.corp"}, []string{"spiffe://corp/payments/api/v2"}, routes...),
	}
	tests := []struct {
		client, route string
		ok            bool
	}{
		{"app1", "db", true},
		{"one", "db", false},
		{"one", "batch", true},     // one label
		{"two", "batch", false},    // "*" does not cross a dot
		{"app1", "batch", false},   // no DNS SAN at all
		{"one", "payments", true},  // one path segment
		{"two", "payments", false}, // "*" does not cross a slash
		{"app1", "local", false},   // the route's allow narrows the listener's
		{"two", "open", true},      // no rules: every verified client
	}
	for i, tt := range tests {
		t.Run(tt.client+"/"+tt.route, func(t *testing.T) {
			cli := clients[tt.client]
			if tt.ok {
				echoCheck(t, cli.forwardAddr(t, tt.route), uint64(i), 64<<10)
				return
			}
			forbidden(t, cli, tt.route)
		})
	}
	ev := srv.waitEvent(t, waitTimeout, "stream_refused of one on db",
		isEvent("stream_refused", "status", "forbidden", "route", "db", "identity_cn", "one"))
	if ev["rule_set"] != "routes.db" || ev["reason"] != "identity_not_allowed" {
		t.Errorf("forbidden line %v: want rule_set routes.db and reason identity_not_allowed", ev)
	}
	srv.waitEvent(t, waitTimeout, "stream_refused of app1 on local",
		isEvent("stream_refused", "status", "forbidden", "route", "local", "rule_set", "routes.local", "reason", "ip_not_allowed"))

	// A reload that takes db from app1 closes app1's session, which has a
	// stream open on db; the other clients see nothing, and one may use db.
	c := dialLocal(t, clients["app1"].forwardAddr(t, "db"))
	c.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 4)); err != nil { // the stream is open end to end
		t.Fatal(err)
	}
	renameInto(t, cfg, conf("cn:one"))
	srv.waitEvent(t, waitTimeout, "session_revoked of app1",
		isEvent("session_revoked", "identity_cn", "app1", "route", "db", "reason", "identity_not_allowed"))
	assertClosed(t, c, waitTimeout)
	echoCheck(t, clients["one"].forwardAddr(t, "db"), 99, 64<<10)
	for name, cli := range clients {
		if n := len(cli.matching(isEvent("session_opened"))); name != "app1" && n != 1 {
			t.Errorf("client %s opened %d sessions, want 1", name, n)
		}
	}
}
