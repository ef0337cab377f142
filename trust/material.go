// Package trust owns the TLS configuration of both roles: certificate, key
// and CA loading, leaf usage checks, and the identity of a verified peer.
package trust

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// Sources names the files a role loads its TLS material from. The first
// three are required; CertFile may hold a chain, leaf first.
type Sources struct {
	CertFile string   // PEM certificate, optionally followed by its intermediates
	KeyFile  string   // PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), unencrypted
	CAFile   string   // PEM bundle of the CA certificates that verify the peer
	CRLFiles []string // CRLs (PEM, one or more per file, or DER) checked against the peer's chain
}

// Material is one immutable, checked load of Sources. It is never mutated
// after Load returns, so it may be shared between goroutines freely; callers
// must not modify it either.
type Material struct {
	Certificate tls.Certificate // own chain and key; Leaf is set
	CAPool      *x509.CertPool  // built from CACerts; verifies the peer
	CACerts     []*x509.Certificate
	CRLs        []*CRL  // parsed from Sources.CRLFiles; signatures are checked when used
	Sources     Sources // the files this was loaded from
}

// Errors wrapped in a *LoadError's Err, for errors.Is.
var (
	ErrNoCertificate  = errors.New("no PEM certificate found")
	ErrNoKey          = errors.New("no PEM private key found")
	ErrEncryptedKey   = errors.New("encrypted private keys are not supported")
	ErrUnsupportedKey = errors.New("unsupported private key type")
	ErrKeyMismatch    = errors.New("does not match certificate")
)

// LoadError is the error Load returns. Its message names the flag and the
// file, never the file's contents: `trust: --key "k.pem": does not match
// certificate "c.pem"`. Err is the cause: an fs error (errors.Is(err,
// fs.ErrNotExist) works), a parse error, or one of the Err* values above.
type LoadError struct {
	Field string // "cert", "key", "ca" or "crl"
	Path  string // the file named by Field
	Err   error
}

func (e *LoadError) Error() string {
	return fmt.Sprintf("trust: --%s %q: %v", e.Field, e.Path, e.Err)
}

func (e *LoadError) Unwrap() error { return e.Err }

// Load reads and checks every file of src: the certificate chain parses, the
// key parses, is unencrypted, is a supported type (RSA, ECDSA, Ed25519) and
// matches the leaf, the CA file holds at least one certificate, and each CRL
// file holds CRLs that ParseCRLs accepts. Load does not check validity dates
// or usages of its own leaf; the peer does. Nor does it check CRL
// signatures: a CRL may be issued by an intermediate that only the peer
// presents. Errors are *LoadError.
func Load(src Sources) (*Material, error) {
	chain, err := readCerts("cert", src.CertFile)
	if err != nil {
		return nil, err
	}
	key, err := readKey(src.KeyFile)
	if err != nil {
		return nil, err
	}
	leaf := chain[0]
	if !publicKeysEqual(key.Public(), leaf.PublicKey) {
		return nil, &LoadError{Field: "key", Path: src.KeyFile,
			Err: fmt.Errorf("%w %q", ErrKeyMismatch, src.CertFile)}
	}
	cas, err := readCerts("ca", src.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	var crls []*CRL
	for _, path := range src.CRLFiles {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, &LoadError{Field: "crl", Path: path, Err: err}
		}
		cs, err := ParseCRLs(data, path)
		if err != nil {
			return nil, &LoadError{Field: "crl", Path: path, Err: err}
		}
		crls = append(crls, cs...)
	}
	ders := make([][]byte, len(chain))
	for i, c := range chain {
		ders[i] = c.Raw
	}
	return &Material{
		Certificate: tls.Certificate{Certificate: ders, PrivateKey: key, Leaf: leaf},
		CAPool:      pool,
		CACerts:     cas,
		CRLs:        crls,
		Sources:     src,
	}, nil
}

// readCerts returns every CERTIFICATE block of the PEM file at path, in
// order; other block types are skipped.
func readCerts(field, path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &LoadError{Field: field, Path: path, Err: err}
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, &LoadError{Field: field, Path: path,
				Err: fmt.Errorf("certificate %d: %w", len(certs)+1, err)}
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, &LoadError{Field: field, Path: path, Err: ErrNoCertificate}
	}
	return certs, nil
}

// readKey returns the first private key of the PEM file at path.
func readKey(path string) (crypto.Signer, error) {
	fail := func(err error) (crypto.Signer, error) {
		return nil, &LoadError{Field: "key", Path: path, Err: err}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fail(err)
	}
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return fail(ErrNoKey)
		}
		var key any
		switch b.Type {
		case "ENCRYPTED PRIVATE KEY":
			return fail(ErrEncryptedKey)
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(b.Bytes)
		default:
			continue // EC PARAMETERS, CERTIFICATE, ...
		}
		if _, ok := b.Headers["DEK-Info"]; ok || b.Headers["Proc-Type"] == "4,ENCRYPTED" {
			return fail(ErrEncryptedKey) // legacy OpenSSL encryption
		}
		if err != nil {
			return fail(fmt.Errorf("%s: %w", b.Type, err))
		}
		switch k := key.(type) {
		case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
			return k.(crypto.Signer), nil
		default:
			return fail(fmt.Errorf("%w %T", ErrUnsupportedKey, key))
		}
	}
}

// publicKeysEqual reports whether a and b are the same public key.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	if !ok {
		return false
	}
	return ea.Equal(b)
}
