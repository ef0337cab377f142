// Package devpki is a development certificate authority on disk, behind
// `tunnel cert`, and in memory for tests. It is not for production use.
package devpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"slices"
	"time"
)

// Default validity periods, used when Options.Days is 0.
const (
	DefaultLeafDays = 825
	DefaultCADays   = 3650
)

// Options tune key generation, validity, the names of issued certificates
// and file writing. The zero value means ECDSA P-256 keys, default
// validity, no extra names, and no overwriting.
type Options struct {
	Days    int    // validity in days; 0 means DefaultLeafDays for leaves, DefaultCADays for the CA; negative is an error
	RSABits int    // 0 = ECDSA P-256; 2048, 3072 or 4096 = RSA of that size; anything else is an error
	Force   bool   // overwrite existing files; without it, refuse if any target file exists
	CRLURL  string // optional http(s) CRL Distribution Point for issued certificates; Init stores it in the CA dir

	// URIs are URI SANs for issued leaves, such as the SPIFFE ID
	// spiffe://example.org/payments/api; each must pass CheckURI.
	URIs []string
	// OrgUnits are subject organizational units (OU) for issued leaves;
	// each must pass CheckOrgUnit.
	OrgUnits []string
}

// validate names the bad field of o.
func (o Options) validate() error {
	switch o.RSABits {
	case 0, 2048, 3072, 4096:
	default:
		return fmt.Errorf("devpki: RSA key size %d: want 2048, 3072 or 4096", o.RSABits)
	}
	if o.Days < 0 {
		return fmt.Errorf("devpki: validity of %d days: must not be negative", o.Days)
	}
	for _, u := range o.URIs {
		if err := CheckURI(u); err != nil {
			return err
		}
	}
	for _, ou := range o.OrgUnits {
		if err := CheckOrgUnit(ou); err != nil {
			return err
		}
	}
	if o.CRLURL != "" {
		u, err := url.Parse(o.CRLURL)
		if err != nil {
			return fmt.Errorf("devpki: CRL URL %q: %w", o.CRLURL, err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			return fmt.Errorf("devpki: CRL URL %q: want an http or https URL with a host and no user info", o.CRLURL)
		}
	}
	return nil
}

func (o Options) validity(defaultDays int) time.Duration {
	d := o.Days
	if d == 0 {
		d = defaultDays
	}
	return time.Duration(d) * 24 * time.Hour
}

// KeyPair is a certificate with its private key, parsed and PEM-encoded.
// KeyPEM is PKCS#8 ("PRIVATE KEY"). It is not modified after creation.
type KeyPair struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte
}

// clockSkew backdates NotBefore so that hosts with slightly slow clocks
// accept a fresh certificate.
const clockSkew = time.Hour

// NewCA returns a self-signed CA certificate valid from an hour ago for
// opt.Days (default DefaultCADays): KeyUsage certSign, cRLSign and
// digitalSignature, CA with MaxPathLen 0 (it signs leaves only), and a
// SubjectKeyId. An empty cn becomes "tunnel dev CA <random hex>".
// opt.Force, opt.CRLURL, opt.URIs and opt.OrgUnits are ignored.
func NewCA(cn string, opt Options) (*KeyPair, error) {
	if err := opt.validate(); err != nil {
		return nil, err
	}
	if cn == "" {
		b := make([]byte, 4)
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("devpki: random CA name: %w", err)
		}
		cn = "tunnel dev CA " + hex.EncodeToString(b)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(opt.validity(DefaultCADays)),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	return create(tmpl, nil, opt)
}

// NewLeaf signs a certificate made from tmpl with ca, under a fresh key
// (ECDSA P-256, or RSA per opt.RSABits). The caller sets the subject, SANs,
// KeyUsage, ExtKeyUsage and, optionally, NotBefore/NotAfter; NewLeaf never
// adds usages, so tests can make certificates that lack them. NewLeaf fills
// in a random positive 128-bit serial, the SubjectKeyId, the AuthorityKeyId
// (from ca), NotBefore (an hour ago) and NotAfter (opt.Days, default
// DefaultLeafDays, after NotBefore) if zero, and CRLDistributionPoints from
// opt.CRLURL if tmpl has none; it adds opt.URIs to tmpl's URI SANs and
// opt.OrgUnits to its subject's OUs. A nil ca makes the certificate
// self-signed. tmpl is not modified.
func NewLeaf(ca *KeyPair, tmpl *x509.Certificate, opt Options) (*KeyPair, error) {
	if err := opt.validate(); err != nil {
		return nil, err
	}
	if tmpl == nil {
		return nil, errors.New("devpki: nil certificate template")
	}
	t := *tmpl
	if t.NotBefore.IsZero() {
		t.NotBefore = time.Now().Add(-clockSkew)
	}
	if t.NotAfter.IsZero() {
		t.NotAfter = t.NotBefore.Add(clockSkew + opt.validity(DefaultLeafDays))
	}
	if len(t.CRLDistributionPoints) == 0 && opt.CRLURL != "" {
		t.CRLDistributionPoints = []string{opt.CRLURL}
	}
	// New slices: appending to tmpl's could write into its backing arrays.
	t.URIs = slices.Clone(t.URIs)
	for _, s := range opt.URIs {
		u, err := url.Parse(s) // CheckURI passed in validate
		if err != nil {
			return nil, fmt.Errorf("devpki: URI %q: %w", s, err)
		}
		t.URIs = append(t.URIs, u)
	}
	t.Subject.OrganizationalUnit = slices.Concat(t.Subject.OrganizationalUnit, opt.OrgUnits)
	return create(&t, ca, opt)
}

// create fills in the serial, key ids and a new key, and signs tmpl by
// parent (self-signed if nil). tmpl belongs to create.
func create(tmpl *x509.Certificate, parent *KeyPair, opt Options) (*KeyPair, error) {
	key, err := newKey(opt.RSABits)
	if err != nil {
		return nil, err
	}
	limit := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 128), big.NewInt(1))
	serial, err := rand.Int(rand.Reader, limit)
	if err != nil {
		return nil, fmt.Errorf("devpki: random serial: %w", err)
	}
	tmpl.SerialNumber = serial.Add(serial, big.NewInt(1)) // in [1, 2^128-1]
	tmpl.SubjectKeyId, err = keyID(key.Public())
	if err != nil {
		return nil, err
	}
	issuer, issuerKey := tmpl, key
	if parent != nil {
		issuer, issuerKey = parent.Cert, parent.Key
		tmpl.AuthorityKeyId = parent.Cert.SubjectKeyId
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), issuerKey)
	if err != nil {
		return nil, fmt.Errorf("devpki: signing %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("devpki: parsing new certificate %q: %w", tmpl.Subject.CommonName, err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("devpki: encoding key: %w", err)
	}
	return &KeyPair{
		Cert:    cert,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
	}, nil
}

// newKey returns an ECDSA P-256 key for bits 0, else an RSA key of bits.
func newKey(bits int) (crypto.Signer, error) {
	var (
		k   crypto.Signer
		err error
	)
	if bits == 0 {
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	} else {
		k, err = rsa.GenerateKey(rand.Reader, bits)
	}
	if err != nil {
		return nil, fmt.Errorf("devpki: generating key: %w", err)
	}
	return k, nil
}

// keyID is the leftmost 160 bits of the SHA-256 of the DER
// SubjectPublicKeyInfo, in the spirit of RFC 7093.
func keyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("devpki: encoding public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return sum[:20], nil
}
