package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/tunnel-dev/tunnel/internal/config"
)

// FuzzConfigFile: no config file, however malformed, panics the loader;
// every refusal comes as problems with a message.
func FuzzConfigFile(f *testing.F) {
	for _, s := range []string{
		"listen: 127.0.0.1:8443\nallow: [10.0.0.0/8]\nroutes:\n  - name: db\n    target: 127.0.0.1:5432\n    allow_identities: [\"cn:app1\"]\n",
		"tls: {cert: a.pem, key: b.pem, ca: c.pem}\ncrl: {deny_on_unavailable: true, files: [x.crl]}\n",
		"routes: [db=127.0.0.1:5432]\nhandshake_timeout: 10s\n",
		"- not a mapping\n", "listen: [1, 2]\n", "a: &x [*x]\n", "\t bad: indent",
	} {
		f.Add([]byte(s))
	}
	dir := f.TempDir()
	in := &config.Input{Role: "server", Given: map[string][]string{}, FileFlag: "--config"}
	for _, row := range serverSettings() {
		if key := configKey(row.flag.Names()[0]); key != "" {
			kind, _ := kindOf(row.flag)
			in.Settings = append(in.Settings, config.Setting{Key: key, Flag: "--" + row.flag.Names()[0], Kind: kind})
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "fuzz.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		in.File = path
		v, probs := config.Resolve(in)
		for _, p := range probs {
			if p.String() == "" {
				t.Fatalf("an empty problem for %q", data)
			}
		}
		if v == nil && len(probs) == 0 {
			t.Fatalf("no config and no problem for %q", data)
		}
		if v != nil {
			v.Settings() // must not panic either
		}
	})
}
