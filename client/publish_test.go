package client

import (
	"errors"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
)

func TestParsePublish(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Publish
		err  string
	}{
		{in: "ssh=127.0.0.1:22", want: Publish{Name: "ssh", Target: "127.0.0.1:22"}},
		{in: " db = unix:/run/pg.sock , proxy-v2 ", want: Publish{Name: "db", Target: "unix:/run/pg.sock", ProxyV2: true}},
		{in: "web=[::1]:8080,proxy-v2", want: Publish{Name: "web", Target: "[::1]:8080", ProxyV2: true}},
		{in: "ssh", err: "want NAME=HOST:PORT"},
		{in: "s/sh=127.0.0.1:22", err: "route name"},
		{in: "ssh=127.0.0.1", err: "missing port"},
		{in: "ssh=:22", err: "has no host"},
		{in: "ssh=127.0.0.1:0", err: "from 1 to 65535"},
		{in: "ssh=unix:run/pg", err: "not absolute"},
		{in: "ssh=127.0.0.1:22,proxy-v1", err: `unknown option "proxy-v1"`},
	} {
		got, err := ParsePublish(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParsePublish(%q) = %+v, %v; want an error containing %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParsePublish(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

// A client needs a forward or a publication; names are published once; a
// raw client, which keeps no session, publishes nothing.
func TestConfigPublish(t *testing.T) {
	log := logrus.NewEntry(logrus.New())
	pki := newTestPKI(t)
	ssh := Publish{Name: "ssh", Target: "127.0.0.1:22"}
	for _, tt := range []struct {
		name string
		cfg  Config
		err  string
	}{
		{"nothing", Config{}, "no forwards configured (and nothing published)"},
		{"twice", Config{Publish: []Publish{ssh, ssh}}, `name "ssh" published twice`},
		{"bad target", Config{Publish: []Publish{{Name: "ssh", Target: "nowhere"}}}, "missing port"},
		{"raw", Config{Raw: true, Publish: []Publish{ssh}}, "keeps no session"},
		{"negative cap", Config{Publish: []Publish{ssh}, PublishMaxStreams: -1}, "negative"},
	} {
		tt.cfg.Server, tt.cfg.Trust, tt.cfg.Log = "127.0.0.1:1", pki.client, log
		_, err := New(tt.cfg)
		var fe *FieldError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s: New = %v, want a *FieldError containing %q", tt.name, err, tt.err)
		}
	}
	c, err := New(Config{Server: "127.0.0.1:1", Trust: pki.client, Log: log, Publish: []Publish{ssh}})
	if err != nil {
		t.Fatalf("a client that only publishes: %v", err)
	}
	if st := c.Stats().Publications["ssh"]; st.Target != "127.0.0.1:22" || st.Live {
		t.Errorf("Stats before any session: %+v", st)
	}
	if c.cfg.PublishMaxStreams != DefaultPublishMaxStreams {
		t.Errorf("PublishMaxStreams default = %d", c.cfg.PublishMaxStreams)
	}
}
