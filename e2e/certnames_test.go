package e2e

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestCertIssueURIAndOU: `tunnel cert issue --uri --ou` makes a client
// certificate whose SPIFFE ID and OU the server's per-route rules match:
// the routes that name them carry bytes, one naming another SPIFFE ID
// refuses the stream. Bad values are exit-2 errors naming the flag.
func TestCertIssueURIAndOU(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	cert, key := pk.issue(t, "--client", "api", "--uri", "spiffe://corp.example/payments/api",
		"--uri", "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66", "--ou", "payments", "--ou", "EU, ops")
	c := readCert(t, cert)
	var uris []string
	for _, u := range c.URIs {
		uris = append(uris, u.String())
	}
	if want := []string{"spiffe://corp.example/payments/api", "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66"}; !slices.Equal(uris, want) {
		t.Errorf("URI SANs = %q, want %q", uris, want)
	}
	if ous := c.Subject.OrganizationalUnit; !slices.Contains(ous, "payments") || !slices.Contains(ous, "EU, ops") || len(ous) != 2 {
		t.Errorf("OUs = %q, want payments and \"EU, ops\"", ous)
	}

	echo := echoBackend(t)
	cfg := filepath.Join(t.TempDir(), "server.yaml")
	renameInto(t, cfg, fmt.Appendf(nil, `listen: 127.0.0.1:0
allow: [127.0.0.1/32]
routes:
  - {name: payments, target: %[1]s, allow_identities: ["uri:spiffe://corp.example/payments/*"]}
  - {name: eu, target: %[1]s, allow_identities: ["ou:EU, ops"]}
  - {name: other, target: %[1]s, allow_identities: ["uri:spiffe://corp.example/other/*"]}
`, echo))
	args := withoutFlag(withoutFlag(serverArgs(pk, "127.0.0.1:0"), "--allow"), "--listen")
	srv := startProc(t, append(args, "--config", cfg)...)
	cli := startProc(t, withFlag(withFlag(clientArgs(pk, srv.addr(t), "payments", "eu", "other"), "--cert", cert), "--key", key)...)
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	echoCheck(t, cli.forwardAddr(t, "payments"), 1, 256<<10)
	echoCheck(t, cli.forwardAddr(t, "eu"), 2, 256<<10)
	forbidden(t, cli, "other")

	for _, tc := range []struct{ flag, value string }{
		{"--uri", "payments/api"},
		{"--uri", "spiffe://Corp.example/x"},
		{"--uri", "spiffe://corp.example/a/"},
		{"--ou", ""},
	} {
		_, stderr, code := runTunnel(t, "cert", "issue", pk.dir, "--client", "bad", tc.flag, tc.value)
		if code != 2 || len(scanLines(stderr)) != 1 || !strings.Contains(stderr, tc.flag+":") {
			t.Errorf("cert issue %s %q: exit %d, stderr %q; want exit 2 and one line naming %s", tc.flag, tc.value, code, stderr, tc.flag)
		}
	}
}
