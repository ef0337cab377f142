// Package trust owns what a TLS peer is trusted on, for both roles: loading
// the certificate, key, CA bundle and CRL files into one immutable Material
// behind a Store; the TLS configs with their leaf usage checks; the identity
// of a verified peer; and revocation checking (RevocationChecker) against
// CRL files and CRLs fetched from Distribution Points through an
// SSRF-hardened fetcher (CRLFetcher), cached and refreshed (CRLStore).
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
	"io/fs"
	"os"
	"slices"
)

// Sources names the files a role loads its TLS material from. The first
// three are required; CertFile may hold a chain, leaf first.
type Sources struct {
	CertFile string // PEM certificate, optionally followed by its intermediates
	// KeyFile is a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC,
	// unencrypted), or an RFC 7512 pkcs11: URI naming a key in a token
	// (see ParsePKCS11URI; needs a build with -tags pkcs11).
	KeyFile  string
	CAFile   string   // PEM bundle of the CA certificates that verify the peer
	CRLFiles []string // CRLs (PEM, one or more per file, or DER) checked against the peer's chain
}

// Paths returns the files src names (certificate, key, CA bundle, CRL
// files), without empty names and duplicates: what a reload re-reads and
// what a file watcher should watch. A KeyFile that is a PKCS#11 URI is no
// file: in its place comes the PIN file its pin-source names, if any (a
// URI that does not parse names none; Load reports it).
func (s Sources) Paths() []string {
	key := s.KeyFile
	if IsPKCS11URI(key) {
		key = ""
		if u, err := ParsePKCS11URI(s.KeyFile); err == nil {
			key = u.PINSource
		}
	}
	var out []string
	for _, p := range append([]string{s.CertFile, key, s.CAFile}, s.CRLFiles...) {
		if p != "" && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// PINFile returns the PIN file of a KeyFile that is a PKCS#11 URI, or "":
// the file whose mode start-up and `tunnel check` look at as they do a key
// file's.
func (s Sources) PINFile() string {
	if !IsPKCS11URI(s.KeyFile) {
		return ""
	}
	u, err := ParsePKCS11URI(s.KeyFile)
	if err != nil {
		return ""
	}
	return u.PINSource
}

// Material is one immutable, checked load of Sources. It is never mutated
// after Load returns, so it may be shared between goroutines freely; callers
// must not modify it either.
type Material struct {
	Certificate tls.Certificate // own chain and key; Leaf is set
	CAPool      *x509.CertPool  // built from CACerts; verifies the peer
	CACerts     []*x509.Certificate
	CRLs        []*CRL  // parsed from Sources.CRLFiles; signatures are checked when used
	Sources     Sources // the files this was loaded from; zero for other sources

	// SPIFFE is set on material from the SPIFFE Workload API
	// (SPIFFESource): then a peer must present an X.509-SVID that chains
	// to the bundle of its own trust domain, whichever CA of CAPool
	// crypto/tls found a chain to. Nil for material from files.
	SPIFFE *SPIFFEMaterial

	// issuers maps each non-self-signed certificate of CACerts (by its
	// DER) to the certificate of CACerts that issued it. Every certificate
	// in CAPool is a root to crypto/x509, so a verified chain ends at the
	// first bundle certificate it reaches; this is how revocation checking
	// walks on from there to the bundle's real roots. Built by Load; nil
	// in a Material built by hand, which then builds it on use.
	issuers map[string]*x509.Certificate
}

// Errors wrapped in a *LoadError's Err, for errors.Is.
var (
	ErrNoCertificate  = errors.New("no PEM certificate found")
	ErrNoKey          = errors.New("no PEM private key found")
	ErrEncryptedKey   = errors.New("encrypted private keys are not supported")
	ErrUnsupportedKey = errors.New("unsupported private key type")
	ErrKeyMismatch    = errors.New("does not match certificate")
)

// LoadError reports one file of Sources that Load refused. Its message names
// the Sources field and the file, never the file's contents: `trust:
// KeyFile "k.pem": does not match certificate "c.pem"`. Err is the cause: an
// fs error (errors.Is(err, fs.ErrNotExist) works), a parse error, or one of
// the Err* values above.
type LoadError struct {
	Field string // the Sources field: "CertFile", "KeyFile", "CAFile" or "CRLFiles"
	Path  string // the file at fault
	Err   error
}

func (e *LoadError) Error() string {
	return fmt.Sprintf("trust: %s %q: %v", e.Field, e.Path, e.Err)
}

func (e *LoadError) Unwrap() error { return e.Err }

// Load reads and checks every file of src: the certificate chain parses, the
// key parses, is unencrypted, is a supported type (RSA, ECDSA, Ed25519) and
// matches the leaf (a PKCS#11 key is found in its token, logged in to with
// the PIN of its pin-source, and its public key matches the leaf), the CA file holds at least one certificate, and each CRL
// file holds CRLs that ParseCRLs accepts. Load does not check validity dates
// or usages of its own leaf; the peer does. Nor does it check CRL
// signatures: a CRL may be issued by an intermediate that only the peer
// presents. Every file is checked, so that one error names every bad file:
// a *LoadError, or several joined (errors.Join) in the order above, the first
// of which errors.As finds.
func Load(src Sources) (*Material, error) {
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	chain, err := readCerts("CertFile", src.CertFile)
	check(err)
	var key crypto.Signer
	keyName := src.KeyFile
	if IsPKCS11URI(src.KeyFile) {
		keyName = RedactPKCS11URI(src.KeyFile)
		if key, err = openPKCS11Key(src.KeyFile); err != nil {
			check(&LoadError{Field: "KeyFile", Path: keyName, Err: err})
		}
	} else {
		key, err = readKey(src.KeyFile)
		check(err)
	}
	if chain != nil && key != nil && !publicKeysEqual(key.Public(), chain[0].PublicKey) {
		check(&LoadError{Field: "KeyFile", Path: keyName, Err: fmt.Errorf("%w %q", ErrKeyMismatch, src.CertFile)})
	}
	cas, err := readCerts("CAFile", src.CAFile)
	check(err)
	var crls []*CRL
	for _, path := range src.CRLFiles {
		cs, err := readCRLs(path)
		check(err)
		crls = append(crls, cs...)
	}
	switch len(errs) {
	case 0:
	case 1:
		return nil, errs[0]
	default:
		return nil, errors.Join(errs...)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	ders := make([][]byte, len(chain))
	for i, c := range chain {
		ders[i] = c.Raw
	}
	return &Material{
		Certificate: tls.Certificate{Certificate: ders, PrivateKey: key, Leaf: chain[0]},
		CAPool:      pool,
		CACerts:     cas,
		CRLs:        crls,
		Sources:     src,
		issuers:     bundleIssuers(cas),
	}, nil
}

// readCRLs returns the CRLs of the file at path.
func readCRLs(path string) ([]*CRL, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		var cs []*CRL
		if cs, err = ParseCRLs(data, path); err == nil {
			return cs, nil
		}
	}
	return nil, &LoadError{Field: "CRLFiles", Path: path, Err: err}
}

// bundleIssuers maps each non-self-signed certificate of cas to its issuer
// among cas, if there is one.
func bundleIssuers(cas []*x509.Certificate) map[string]*x509.Certificate {
	out := make(map[string]*x509.Certificate)
	for _, c := range cas {
		if is := findIssuer(c, cas); is != nil {
			out[string(c.Raw)] = is
		}
	}
	return out
}

// caIssuer returns the certificate of m's CA bundle that issued c, or nil
// if c is not a bundle certificate, is self-signed, or its issuer is not in
// the bundle.
func (m *Material) caIssuer(c *x509.Certificate) *x509.Certificate {
	if m == nil {
		return nil
	}
	issuers := m.issuers
	if issuers == nil {
		issuers = bundleIssuers(m.CACerts)
	}
	return issuers[string(c.Raw)]
}

// UncheckedCAs returns the certificates of CACerts that are not self-signed
// and whose issuer is not in CACerts: intermediates whose revocation cannot
// be checked, since the CRL that would list them is signed by a CA the
// bundle does not hold. Start-up and `tunnel check` warn about them.
func (m *Material) UncheckedCAs() []*x509.Certificate {
	var out []*x509.Certificate
	for _, c := range m.CACerts {
		if !selfSigned(c) && m.caIssuer(c) == nil {
			out = append(out, c)
		}
	}
	return out
}

// extendChain returns chain with the bundle issuers of its last certificate
// appended, up to a certificate that has none (a self-signed root, or one
// whose issuer is not in the bundle). The caller's slice is never modified.
func (m *Material) extendChain(chain []*x509.Certificate) []*x509.Certificate {
	if m == nil || len(chain) == 0 {
		return chain
	}
	out := chain
	for last := chain[len(chain)-1]; len(out) <= len(chain)+len(m.CACerts); {
		is := m.caIssuer(last)
		if is == nil || slices.ContainsFunc(out, is.Equal) {
			break // the end, or a loop of cross-signed CAs
		}
		out = append(slices.Clip(out), is)
		last = is
	}
	return out
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
		return nil, &LoadError{Field: "KeyFile", Path: path, Err: err}
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

// LooseKeyFile reports the mode of the file at path (through symlinks) and
// whether its group or others have any access to it (mode & 0o077), which
// ssh refuses for a private key. Start-up and `tunnel check` warn about it;
// it is not an error, since a key that works still works. An unreadable
// path reports false: Load names that problem.
func LooseKeyFile(path string) (fs.FileMode, bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, false
	}
	return fi.Mode().Perm(), fi.Mode().Perm()&0o077 != 0
}

// publicKeysEqual reports whether a and b are the same public key.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	if !ok {
		return false
	}
	return ea.Equal(b)
}
