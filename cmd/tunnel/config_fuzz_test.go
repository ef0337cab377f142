package main

import (
	"io"
	"os"
	"path/filepath"
	"testing"
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
	flags := serverCommand(io.Discard).Flags
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "fuzz.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		fc, probs := parseConfigFile(path, flags)
		for _, p := range probs {
			if p.String() == "" {
				t.Fatalf("an empty problem for %q", data)
			}
		}
		if fc == nil && len(probs) == 0 {
			t.Fatalf("no config and no problem for %q", data)
		}
	})
}
