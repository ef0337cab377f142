package main

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Exposes and publications from the file mean what the flags mean: a
// mapping item becomes the flag's text, with its rules and caps.
func TestConfigExposesAndPublish(t *testing.T) {
	dir := pki(t)
	p := func(f string) string { return filepath.Join(dir, f) }
	tls := `tls: {cert: ` + p("srv.test.pem") + `, key: ` + p("srv.test-key.pem") + `, ca: ` + p("ca.pem") + `}` + "\n"
	path := writeFile(t, "server.yaml", tls+`allow: [127.0.0.1/32]
exposes:
  - listen: 0.0.0.0:2222
    name: ssh
    allow: [203.0.113.0/24, 198.51.100.7]
    publishers: ["cn:laptop", "uri:spiffe://corp/edge/*"]
    max_conns_per_addr: 16
    max_streams_per_publisher: 8
  - "127.0.0.1:5432=db,allow=10.0.0.0/8,publisher=cn:db1"
`)
	s := settingsOf(t, serverCommand(io.Discard), "--config", path)
	if got := len(s.Server.Config.Routes); got != 0 {
		t.Errorf("%d routes, want none: a server may only expose", got)
	}
	if len(s.Server.Exposes) != 2 || len(s.Server.Config.Exposes) != 2 {
		t.Fatalf("exposes %+v", s.Server.Exposes)
	}
	ssh := s.Server.Exposes[0]
	if ssh.Listen != "0.0.0.0:2222" || ssh.Name != "ssh" || ssh.Allow.String() != "198.51.100.7/32,203.0.113.0/24" ||
		ssh.Publishers.String() != "identities cn:laptop, uri:spiffe://corp/edge/*" || ssh.MaxConnsPerAddr != 16 || ssh.MaxStreamsPerPublisher != 8 {
		t.Errorf("expose ssh = %+v (allow %s, publishers %s)", ssh, ssh.Allow, ssh.Publishers)
	}
	if db := s.Server.Exposes[1]; db.Listen != "127.0.0.1:5432" || db.Publishers.Name != "exposes.db.publishers" {
		t.Errorf("expose db = %+v", db)
	}

	cpath := writeFile(t, "client.yaml", `tls: {cert: `+p("app1.pem")+`, key: `+p("app1-key.pem")+`, ca: `+p("ca.pem")+`}
server: [127.0.0.1:8443]
publish:
  - name: ssh
    target: 127.0.0.1:22
    options: [proxy-v2]
  - db=unix:/run/postgresql/.s.PGSQL.5432
publish_max_streams: 64
`)
	cs := settingsOf(t, clientCommand(io.Discard), "--config", cpath)
	var got []string
	for _, pb := range cs.Client.Config.Publish {
		got = append(got, pb.Name+"="+pb.Target+map[bool]string{true: "+v2"}[pb.ProxyV2])
	}
	if want := []string{"ssh=127.0.0.1:22+v2", "db=unix:/run/postgresql/.s.PGSQL.5432"}; !slices.Equal(got, want) || cs.Client.Config.PublishMaxStreams != 64 {
		t.Errorf("publish = %q (max streams %d), want %q and 64", got, cs.Client.Config.PublishMaxStreams, want)
	}
	if n := len(cs.Client.Config.Forwards); n != 0 {
		t.Errorf("%d forwards, want none: a client may only publish", n)
	}
}

// Every problem of an expose or a publication names its line and key, as
// a route's do; an expose without an allowlist or a publisher does not
// start.
func TestConfigExposeProblems(t *testing.T) {
	for _, tt := range []struct {
		name, body string
		want       string
	}{
		{"no allowlist", "exposes:\n  - listen: 127.0.0.1:1\n    name: db\n    publishers: [cn:a]\n", `:2: exposes[0]: server: expose "127.0.0.1:1=db,publisher=cn:a": expose "db" has no allowlist`},
		{"no publisher", "exposes:\n  - \"127.0.0.1:1=db,allow=10.0.0.0/8\"\n", `:2: exposes[0]: server: expose "127.0.0.1:1=db,allow=10.0.0.0/8": expose "db" has no publisher rule`},
		{"missing listen", "exposes:\n  - name: db\n    allow: [10.0.0.0/8]\n    publishers: [cn:a]\n", ":2: exposes[0].listen: required"},
		{"unknown key", "exposes:\n  - listen: 127.0.0.1:1\n    name: db\n    allowed: [x]\n", ":4: exposes[0].allowed: unknown key (an expose has listen"},
		{"comma", "exposes:\n  - listen: 127.0.0.1:1\n    name: db\n    allow: [\"10.0.0.0/8,10.1.0.0/16\"]\n    publishers: [cn:a]\n", `:4: exposes[0].allow[0]: "10.0.0.0/8,10.1.0.0/16": a comma cannot be written here`},
		{"bad rule", "exposes:\n  - listen: 127.0.0.1:1\n    name: db\n    allow: [10.0.0.0/8]\n    publishers: [\"cn:a*\"]\n", ":2: exposes[0]: server: expose"},
		{"bad cap", "exposes:\n  - listen: 127.0.0.1:1\n    name: db\n    allow: [10.0.0.0/8]\n    publishers: [cn:a]\n    max_conns_per_addr: lots\n", `:6: exposes[0].max_conns_per_addr: "lots" is not a number of 0 or more`},
		{"not a list", "exposes: 127.0.0.1:1=db\n", ":1: exposes: want a list of exposes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, probs, err := resolveCmd(t, serverCommand(io.Discard), "--config", writeFile(t, "c.yaml", tt.body))
			if err != nil || len(probs) == 0 {
				t.Fatalf("no problems (%v)", err)
			}
			if !strings.Contains(probs[0].String(), tt.want) {
				t.Errorf("problem %q, want it to contain %q", probs[0].String(), tt.want)
			}
		})
	}
	for _, tt := range []struct{ body, want string }{
		{"publish:\n  - name: db\n", ":2: publish[0].target: required"},
		{"publish:\n  - {name: db, target: \"127.0.0.1:1\", options: [proxy-v1]}\n", `unknown option "proxy-v1" (known: proxy-v2)`},
		{"publish:\n  - db=localhost\n", `missing port`},
	} {
		_, probs, _ := resolveCmd(t, clientCommand(io.Discard), "--config", writeFile(t, "c.yaml", tt.body))
		if len(probs) == 0 || !strings.Contains(probs[0].String(), tt.want) {
			t.Errorf("%q: problems %v, want one containing %q", tt.body, probs, tt.want)
		}
	}
}

// A reload applies an expose's rules; moving its listener, or adding one,
// takes a restart, and says so.
func TestExposeRestartNeeded(t *testing.T) {
	dir := pki(t)
	p := func(f string) string { return filepath.Join(dir, f) }
	conf := func(exposes string) string {
		return writeFile(t, "s.yaml", `tls: {cert: `+p("srv.test.pem")+`, key: `+p("srv.test-key.pem")+`, ca: `+p("ca.pem")+`}
allow: [127.0.0.1/32]
exposes:
`+exposes)
	}
	base := settingsOf(t, serverCommand(io.Discard), "--config", conf("  - \"127.0.0.1:1=db,allow=10.0.0.0/8,publisher=cn:a\"\n"))
	for _, tt := range []struct {
		exposes string
		restart bool
	}{
		{"  - \"127.0.0.1:1=db,allow=10.1.0.0/16,publisher=cn:b,max-streams-per-publisher=4\"\n", false},
		{"  - \"127.0.0.1:2=db,allow=10.0.0.0/8,publisher=cn:a\"\n", true},
		{"  - \"127.0.0.1:1=db,allow=10.0.0.0/8,publisher=cn:a,max-conns-per-addr=3\"\n", true},
		{"  - \"127.0.0.1:1=db,allow=10.0.0.0/8,publisher=cn:a\"\n  - \"127.0.0.1:3=x,allow=10.0.0.0/8,publisher=cn:a\"\n", true},
	} {
		next := settingsOf(t, serverCommand(io.Discard), "--config", conf(tt.exposes))
		if got := slices.Contains(next.RestartNeeded(base), "exposes"); got != tt.restart {
			t.Errorf("exposes %q: restart needed %v, want %v", tt.exposes, got, tt.restart)
		}
	}
}

// `tunnel check` lists the exposes and publications.
func TestCheckListsExposes(t *testing.T) {
	dir := pki(t)
	p := func(f string) string { return filepath.Join(dir, f) }
	conf := writeFile(t, "s.yaml", `tls: {cert: `+p("srv.test.pem")+`, key: `+p("srv.test-key.pem")+`, ca: `+p("ca.pem")+`}
allow: [127.0.0.1/32]
exposes: ["0.0.0.0:2222=ssh,allow=0.0.0.0/0,publisher=cn:laptop"]
`)
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"tunnel", "check", "--config", conf}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"expose       0.0.0.0:2222 -> publishers of ssh: allow 0.0.0.0/0; publishers identities cn:laptop",
		"warning: exposes: expose ssh: 0.0.0.0/0 admits every IPv4 address"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}
