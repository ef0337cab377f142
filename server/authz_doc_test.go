package server

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/tunnel-dev/tunnel/trust"
)

// wildcardExample is one row of the wildcard table in docs/CONFIG.md.
type wildcardExample struct {
	rule  string
	kind  string // of the value: dns, uri or cn
	value string
	want  bool
	line  int
}

// readWildcardExamples parses the table between the wildcard-examples
// markers of docs/CONFIG.md: cells in backquotes, a value in double quotes
// being a Go string literal.
func readWildcardExamples(t *testing.T) []wildcardExample {
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
	var out []wildcardExample
	for i, line := range strings.Split(string(table), "\n") {
		cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
		if len(cells) != 3 || !strings.HasPrefix(strings.TrimSpace(cells[0]), "`") {
			continue // the marker's line, the header, the separator
		}
		cell := func(s string) string {
			s = strings.Trim(strings.TrimSpace(s), "`")
			if strings.HasPrefix(s, `"`) {
				u, err := strconv.Unquote(s)
				if err != nil {
					t.Fatalf("docs/CONFIG.md:%d: %s: %v", first+i, s, err)
				}
				s = u
			}
			return s
		}
		kind, value, _ := strings.Cut(cell(cells[1]), ":")
		want := strings.TrimSpace(cells[2])
		if want != "yes" && want != "no" {
			t.Fatalf("docs/CONFIG.md:%d: matches is %q, want yes or no", first+i, want)
		}
		out = append(out, wildcardExample{rule: cell(cells[0]), kind: kind, value: value, want: want == "yes", line: first + i})
	}
	if len(out) < 20 {
		t.Fatalf("docs/CONFIG.md: %d wildcard examples; the table did not parse", len(out))
	}
	return out
}

// TestWildcardExamples runs the grammar's table of docs/CONFIG.md.
func TestWildcardExamples(t *testing.T) {
	for _, ex := range readWildcardExamples(t) {
		r, err := ParseIdentityRule(ex.rule)
		if err != nil {
			t.Errorf("docs/CONFIG.md:%d: %v", ex.line, err)
			continue
		}
		var id trust.Identity
		switch ex.kind {
		case "dns":
			id.DNSNames = []string{ex.value}
		case "uri":
			id.URIs = []string{ex.value}
		case "cn":
			id.CommonName, id.CommonNames = ex.value, []string{ex.value}
		default:
			t.Fatalf("docs/CONFIG.md:%d: unknown value kind %q", ex.line, ex.kind)
		}
		if got := r.Matches(id); got != ex.want {
			t.Errorf("docs/CONFIG.md:%d: %s against %s:%q = %v, want %v", ex.line, ex.rule, ex.kind, ex.value, got, ex.want)
		}
	}
}
