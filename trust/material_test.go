package trust_test

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/trust"
)

func TestLoadKeyForms(t *testing.T) {
	ca := newCA(t, "CA")
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8 := func(k crypto.Signer) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	sec1 := func(k *ecdsa.PrivateKey) []byte {
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	}
	params := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 5, 43, 129, 4, 0, 34}})
	tests := []struct {
		name   string
		key    crypto.Signer
		keyPEM []byte
	}{
		{"RSA PKCS#1", rsaKey, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})},
		{"RSA PKCS#8", rsaKey, pkcs8(rsaKey)},
		{"ECDSA SEC1", ecKey, sec1(ecKey)},
		{"ECDSA SEC1 after EC PARAMETERS", ecKey, append(params, sec1(ecKey)...)},
		{"ECDSA PKCS#8", ecKey, pkcs8(ecKey)},
		{"Ed25519 PKCS#8", edKey, pkcs8(edKey)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaf := sign(t, leafTmpl("app1", x509.ExtKeyUsageClientAuth), tt.key, ca)
			src := sources(t, leaf, nil, ca)
			if err := os.WriteFile(src.KeyFile, tt.keyPEM, 0o600); err != nil {
				t.Fatal(err)
			}
			m, err := trust.Load(src)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if !m.Certificate.Leaf.Equal(leaf.cert) {
				t.Error("Leaf is not the loaded certificate")
			}
			if !tt.key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(m.Certificate.PrivateKey.(crypto.Signer).Public()) {
				t.Error("PrivateKey is not the loaded key")
			}
			if len(m.CACerts) != 1 || !m.CACerts[0].Equal(ca.cert) || !reflect.DeepEqual(m.Sources, src) {
				t.Errorf("CACerts/Sources not as loaded: %d CA certs, %+v", len(m.CACerts), m.Sources)
			}
			if _, err := leaf.cert.Verify(x509.VerifyOptions{Roots: m.CAPool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
				t.Errorf("CAPool does not verify a leaf of the CA: %v", err)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	ca := newCA(t, "CA")
	leaf := newLeaf(t, ca, "app1", x509.ExtKeyUsageClientAuth, nil)
	other := newLeaf(t, ca, "app2", x509.ExtKeyUsageClientAuth, nil)
	x25519, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	xder, err := x509.MarshalPKCS8PrivateKey(x25519)
	if err != nil {
		t.Fatal(err)
	}
	garbage := []byte("not a PEM file\n")
	badCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")})
	legacy := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{
		"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00000000000000000000000000000000"}, Bytes: []byte("junk")})

	tests := []struct {
		name      string
		edit      func(t *testing.T, src *trust.Sources)
		field     string
		is        error  // errors.Is target, if any
		msgSuffix string // the message after `trust: Field "path": `
	}{
		{name: "missing cert", field: "CertFile", is: fs.ErrNotExist, edit: func(t *testing.T, s *trust.Sources) {
			s.CertFile = filepath.Join(t.TempDir(), "nope.pem")
		}},
		{name: "missing key", field: "KeyFile", is: fs.ErrNotExist, edit: func(t *testing.T, s *trust.Sources) {
			s.KeyFile = filepath.Join(t.TempDir(), "nope.pem")
		}},
		{name: "missing ca", field: "CAFile", is: fs.ErrNotExist, edit: func(t *testing.T, s *trust.Sources) {
			s.CAFile = filepath.Join(t.TempDir(), "nope.pem")
		}},
		{name: "cert garbage", field: "CertFile", is: trust.ErrNoCertificate, msgSuffix: "no PEM certificate found", edit: func(t *testing.T, s *trust.Sources) {
			writeFile(t, filepath.Dir(s.CertFile), "cert.pem", garbage)
		}},
		{name: "cert key only", field: "CertFile", is: trust.ErrNoCertificate, edit: func(t *testing.T, s *trust.Sources) {
			writeFile(t, filepath.Dir(s.CertFile), "cert.pem", leaf.keyPEM)
		}},
		{name: "cert unparsable", field: "CertFile", edit: func(t *testing.T, s *trust.Sources) {
			writeFile(t, filepath.Dir(s.CertFile), "cert.pem", badCert)
		}},
		{name: "key garbage", field: "KeyFile", is: trust.ErrNoKey, edit: func(t *testing.T, s *trust.Sources) {
			writeFile(t, filepath.Dir(s.KeyFile), "key.pem", garbage)
		}},
		{name: "key mismatch", field: "KeyFile", is: trust.ErrKeyMismatch, edit: func(t *testing.T, s *trust.Sources) {
			writeFile(t, filepath.Dir(s.KeyFile), "key.pem", other.keyPEM)
		}},
		{name: "key encrypted PKCS#8", field: "KeyFile", is: trust.ErrEncryptedKey, edit: func(t *testing.T, s *trust.Sources) {
			writeFile(t, filepath.Dir(s.KeyFile), "key.pem", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte("junk")}))
		}},
		{name: "key encrypted legacy", field: "KeyFile", is: trust.ErrEncryptedKey, edit: func(t *testing.T, s *trust.Sources) {
			writeFile(t, filepath.Dir(s.KeyFile), "key.pem", legacy)
		}},
		{name: "key X25519", field: "KeyFile", is: trust.ErrUnsupportedKey, edit: func(t *testing.T, s *trust.Sources) {
			writeFile(t, filepath.Dir(s.KeyFile), "key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: xder}))
		}},
		{name: "key unparsable", field: "KeyFile", edit: func(t *testing.T, s *trust.Sources) {
			writeFile(t, filepath.Dir(s.KeyFile), "key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte("junk")}))
		}},
		{name: "ca key only", field: "CAFile", is: trust.ErrNoCertificate, edit: func(t *testing.T, s *trust.Sources) {
			writeFile(t, filepath.Dir(s.CAFile), "ca.pem", ca.keyPEM)
		}},
		{name: "ca garbage", field: "CAFile", is: trust.ErrNoCertificate, edit: func(t *testing.T, s *trust.Sources) {
			writeFile(t, filepath.Dir(s.CAFile), "ca.pem", garbage)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := sources(t, leaf, nil, ca)
			tt.edit(t, &src)
			m, err := trust.Load(src)
			if err == nil {
				t.Fatalf("Load = %v, nil; want error", m)
			}
			le, ok := errors.AsType[*trust.LoadError](err)
			if !ok {
				t.Fatalf("Load error %T %v, want *LoadError", err, err)
			}
			path := map[string]string{"CertFile": src.CertFile, "KeyFile": src.KeyFile, "CAFile": src.CAFile}[tt.field]
			if le.Field != tt.field || le.Path != path {
				t.Errorf("LoadError{Field: %q, Path: %q}, want {%q, %q}", le.Field, le.Path, tt.field, path)
			}
			prefix := "trust: " + tt.field + " \"" + path + "\": "
			if !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("error %q does not start with %q", err, prefix)
			}
			if tt.msgSuffix != "" && err.Error() != prefix+tt.msgSuffix {
				t.Errorf("error %q, want %q", err, prefix+tt.msgSuffix)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.is)
			}
			if strings.Contains(err.Error(), "BEGIN") || strings.Contains(err.Error(), "MII") {
				t.Errorf("error %q shows PEM contents", err)
			}
		})
	}
}

func TestLoadKeyMismatchMessage(t *testing.T) {
	ca := newCA(t, "CA")
	leaf := newLeaf(t, ca, "app1", x509.ExtKeyUsageClientAuth, nil)
	src := sources(t, leaf, nil, ca)
	writeFile(t, filepath.Dir(src.KeyFile), "key.pem", ca.keyPEM)
	_, err := trust.Load(src)
	want := "trust: KeyFile \"" + src.KeyFile + "\": does not match certificate \"" + src.CertFile + "\""
	if err == nil || err.Error() != want {
		t.Errorf("Load error = %v, want %s", err, want)
	}
}

// Load checks every file, so one error names each bad one, in order.
func TestLoadNamesEveryBadFile(t *testing.T) {
	ca := newCA(t, "CA")
	other := newLeaf(t, ca, "app2", x509.ExtKeyUsageClientAuth, nil)
	src := sources(t, newLeaf(t, ca, "app1", x509.ExtKeyUsageClientAuth, nil), nil, ca)
	writeFile(t, filepath.Dir(src.KeyFile), "key.pem", other.keyPEM)
	writeFile(t, filepath.Dir(src.CAFile), "ca.pem", []byte("no CA here\n"))
	src.CRLFiles = []string{filepath.Join(t.TempDir(), "missing.crl")}
	_, err := trust.Load(src)
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("Load error %v names one file, want three", err)
	}
	var got []string
	for _, e := range joined.Unwrap() {
		le, ok := errors.AsType[*trust.LoadError](e)
		if !ok {
			t.Fatalf("%v is not a *LoadError", e)
		}
		got = append(got, le.Field)
	}
	if want := []string{"KeyFile", "CAFile", "CRLFiles"}; !slices.Equal(got, want) {
		t.Errorf("Load names %q, want %q", got, want)
	}
	if le, _ := errors.AsType[*trust.LoadError](err); le.Field != "KeyFile" || !errors.Is(err, trust.ErrKeyMismatch) {
		t.Errorf("errors.As finds %v first, want the key mismatch", le)
	}
}

// selfSignedPEM returns a valid self-signed certificate and its SEC1 key.
func selfSignedPEM(tb testing.TB) (certPEM, keyPEM []byte) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := leafTmpl("fuzz", x509.ExtKeyUsageClientAuth)
	tmpl.SerialNumber = big.NewInt(1)
	tmpl.NotAfter = time.Now().Add(time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func FuzzLoad(f *testing.F) {
	f.Add([]byte("garbage"), []byte("garbage"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
		[]byte("-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----\n"))
	certPEM, keyPEM := selfSignedPEM(f)
	f.Add(certPEM, keyPEM)
	f.Add(append(certPEM, keyPEM...), keyPEM[:len(keyPEM)/2])
	dir := f.TempDir() // one per fuzzing process; each process runs inputs one at a time
	f.Fuzz(func(t *testing.T, certPEM, keyPEM []byte) {
		src := trust.Sources{
			CertFile: filepath.Join(dir, "cert.pem"),
			KeyFile:  filepath.Join(dir, "key.pem"),
			CAFile:   filepath.Join(dir, "ca.pem"),
		}
		for p, data := range map[string][]byte{src.CertFile: certPEM, src.KeyFile: keyPEM, src.CAFile: certPEM} {
			if err := os.WriteFile(p, data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		m, err := trust.Load(src)
		if err != nil {
			if _, ok := errors.AsType[*trust.LoadError](err); !ok {
				t.Fatalf("Load error %T is not *LoadError", err)
			}
			return
		}
		if m.Certificate.Leaf == nil || m.CAPool == nil || len(m.CACerts) == 0 {
			t.Fatalf("Load succeeded with incomplete material")
		}
	})
}

func TestLooseKeyFile(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		mode  os.FileMode
		loose bool
	}{{0o600, false}, {0o400, false}, {0o640, true}, {0o644, true}, {0o604, true}, {0o620, true}} {
		p := writeFile(t, dir, "key.pem", []byte("k"))
		if err := os.Chmod(p, tt.mode); err != nil {
			t.Fatal(err)
		}
		if mode, loose := trust.LooseKeyFile(p); mode != tt.mode || loose != tt.loose {
			t.Errorf("mode %o: LooseKeyFile = %o, %v; want %v", tt.mode, mode, loose, tt.loose)
		}
	}
	if _, loose := trust.LooseKeyFile(dir + "/missing"); loose {
		t.Error("a missing file reported loose")
	}
}

func TestSourcesPaths(t *testing.T) {
	src := trust.Sources{CertFile: "c.pem", KeyFile: "k.pem", CAFile: "c.pem", CRLFiles: []string{"a.crl", "", "b.crl"}}
	if got, want := src.Paths(), []string{"c.pem", "k.pem", "a.crl", "b.crl"}; !slices.Equal(got, want) {
		t.Errorf("Paths() = %q, want %q", got, want)
	}
	// A key in a token is no file: its PIN file is watched instead.
	src.KeyFile = "pkcs11:token=t;object=k?module-path=/usr/lib/m.so&pin-source=file:/etc/t/pin"
	if got, want := src.Paths(), []string{"c.pem", "/etc/t/pin", "a.crl", "b.crl"}; !slices.Equal(got, want) {
		t.Errorf("Paths() with a PKCS#11 key = %q, want %q", got, want)
	}
	if got := src.PINFile(); got != "/etc/t/pin" {
		t.Errorf("PINFile() = %q", got)
	}
	src.KeyFile = "pkcs11:token=t;object=k?module-path=/usr/lib/m.so"
	if got, want := src.Paths(), []string{"c.pem", "a.crl", "b.crl"}; !slices.Equal(got, want) {
		t.Errorf("Paths() with a PKCS#11 key without a PIN file = %q, want %q", got, want)
	}
}
