package e2e

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// wildcardRow is one row of the wildcard table of docs/CONFIG.md.
type wildcardRow struct {
	rule, kind, value string
	match             bool
	line              int
}

// wildcardRows parses the table between the wildcard-examples markers of
// docs/CONFIG.md, as server/authz_doc_test.go does for the unit test.
func wildcardRows(t *testing.T) []wildcardRow {
	t.Helper()
	doc, err := os.ReadFile("../docs/CONFIG.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := bytes.Cut(doc, []byte("<!-- wildcard-examples: begin"))
	table, _, ok2 := bytes.Cut(rest, []byte("<!-- wildcard-examples: end -->"))
	if !ok || !ok2 {
		t.Fatal("docs/CONFIG.md: no wildcard-examples table")
	}
	first := bytes.Count(doc[:len(doc)-len(rest)], []byte("\n")) + 1
	var rows []wildcardRow
	for i, line := range strings.Split(string(table), "\n") {
		cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
		if len(cells) != 3 || !strings.HasPrefix(strings.TrimSpace(cells[0]), "`") {
			continue
		}
		cell := func(s string) string {
			s = strings.Trim(strings.TrimSpace(s), "`")
			if strings.HasPrefix(s, `"`) {
				u, err := strconv.Unquote(s)
				if err != nil {
					t.Fatalf("docs/CONFIG.md:%d: %v", first+i, err)
				}
				s = u
			}
			return s
		}
		kind, value, _ := strings.Cut(cell(cells[1]), ":")
		rows = append(rows, wildcardRow{rule: cell(cells[0]), kind: kind, value: value,
			match: strings.TrimSpace(cells[2]) == "yes", line: first + i})
	}
	if len(rows) < 20 {
		t.Fatalf("docs/CONFIG.md: %d wildcard rows; the table did not parse", len(rows))
	}
	return rows
}

// TestWildcardTable runs every row of the wildcard table of docs/CONFIG.md
// through the real binaries: route rN admits the row's rule only, and a
// client whose certificate carries the row's value opens a stream to it;
// a "yes" row's bytes come back, a "no" row's stream is forbidden.
func TestWildcardTable(t *testing.T) {
	t.Parallel()
	rows := wildcardRows(t)
	pk := pkiDir(t)
	ca := loadCA(t, pk)
	echo := echoBackend(t)
	var cfg strings.Builder
	cfg.WriteString("listen: 127.0.0.1:0\nallow: [127.0.0.1/32]\nroutes:\n")
	routesOf := map[string][]string{} // identity (kind:value) -> routes
	var idents []string
	for i, r := range rows {
		fmt.Fprintf(&cfg, "  - name: r%d\n    target: %s\n    allow_identities: [%q]\n", i, echo, r.rule)
		id := r.kind + ":" + r.value
		if _, ok := routesOf[id]; !ok {
			idents = append(idents, id)
		}
		routesOf[id] = append(routesOf[id], fmt.Sprintf("r%d", i))
	}
	cfgFile := filepath.Join(t.TempDir(), "server.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	args := withoutFlag(withoutFlag(serverArgs(pk, "127.0.0.1:0"), "--allow"), "--listen")
	srv := startProc(t, append(args, "--config", cfgFile)...)
	addr := srv.addr(t)

	dir := t.TempDir()
	clients := map[string]*proc{}
	for n, id := range idents {
		kind, value, _ := strings.Cut(id, ":")
		tmpl := clientTmpl(fmt.Sprintf("wild%d", n))
		switch kind {
		case "dns":
			tmpl.DNSNames = []string{value}
		case "uri":
			u, err := url.Parse(value)
			if err != nil || u.String() != value {
				t.Fatalf("%s: a certificate cannot carry it as written (%v, %q)", id, err, u)
			}
			tmpl.URIs = []*url.URL{u}
		case "cn":
			tmpl.Subject.CommonName = value
		default:
			t.Fatalf("%s: unknown kind", id)
		}
		_, certPEM, keyPEM := leafPEM(t, ca, tmpl)
		cert, key := filepath.Join(dir, fmt.Sprintf("id%d.pem", n)), filepath.Join(dir, fmt.Sprintf("id%d-key.pem", n))
		for f, b := range map[string][]byte{cert: certPEM, key: keyPEM} {
			if err := os.WriteFile(f, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		cargs := withFlag(withFlag(clientArgs(pk, addr, routesOf[id]...), "--cert", cert), "--key", key)
		clients[id] = startProc(t, cargs...)
	}
	for id, c := range clients {
		c.waitEvent(t, waitTimeout, "session of "+id, isEvent("session_opened"))
	}
	matched, refused := 0, 0
	for i, r := range rows {
		cli := clients[r.kind+":"+r.value]
		route := fmt.Sprintf("r%d", i)
		t.Run(fmt.Sprintf("line%d", r.line), func(t *testing.T) {
			if r.match {
				echoCheck(t, cli.forwardAddr(t, route), uint64(i), 4<<10)
				matched++
				return
			}
			forbidden(t, cli, route)
			refused++
		})
	}
	t.Logf("%d rows: %d matched and carried bytes, %d forbidden", len(rows), matched, refused)
}
