package trust

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"
)

// CRL extensions and entry extensions this package understands. A CRL that
// carries an Issuing Distribution Point or a Delta CRL Indicator is a partial
// or delta list; treating it as complete would miss revocations, so it is
// refused. Any other critical extension is refused as unknown, as RFC 5280
// requires; crypto/x509 does not do this itself.
var (
	oidAuthorityKeyID       = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidCRLNumber            = asn1.ObjectIdentifier{2, 5, 29, 20}
	oidDeltaCRLIndicator    = asn1.ObjectIdentifier{2, 5, 29, 27}
	oidIssuingDistPoint     = asn1.ObjectIdentifier{2, 5, 29, 28}
	oidEntryReasonCode      = asn1.ObjectIdentifier{2, 5, 29, 21}
	oidEntryInvalidityDate  = asn1.ObjectIdentifier{2, 5, 29, 24}
	oidEntryCertIssuer      = asn1.ObjectIdentifier{2, 5, 29, 29}
	errCRLNoIssuerSignature = errors.New("signature does not verify against the issuing CA")
)

// clockSkew is how far a CRL's thisUpdate may lie in the future and still be
// used: clocks of CA and server disagree by seconds, not by minutes.
const clockSkew = 5 * time.Minute

// maxVerdicts bounds the per-CRL cache of signature checks. Only CAs that
// chain to a configured root reach it, so a handful is normal.
const maxVerdicts = 64

// CRL is one parsed certificate revocation list and where it came from. It is
// immutable apart from an internal cache of signature checks, and safe for
// concurrent use.
type CRL struct {
	List   *x509.RevocationList
	Source string // the file path or URL it was read from

	revoked map[string]x509.RevocationListEntry // by serial number, big-endian bytes

	mu       sync.Mutex
	verdicts map[[32]byte]error // issuer certificate fingerprint -> verification result
}

// ParseCRLs parses data as one or more PEM blocks of type "X509 CRL", or as
// a single DER CRL, and checks each with NewCRL. source names the data in
// errors and in CRL.Source.
func ParseCRLs(data []byte, source string) ([]*CRL, error) {
	// DER starts with a SEQUENCE tag; PEM may start with any text.
	if len(data) > 0 && data[0] == 0x30 {
		list, err := x509.ParseRevocationList(data)
		if err != nil {
			return nil, fmt.Errorf("not a PEM or DER CRL: %w", err)
		}
		c, err := NewCRL(list, source)
		if err != nil {
			return nil, err
		}
		return []*CRL{c}, nil
	}
	var out []*CRL
	if !bytes.Contains(data, []byte("-----BEGIN")) {
		_, err := x509.ParseRevocationList(data)
		return nil, fmt.Errorf("not a PEM or DER CRL: %w", err)
	}
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "X509 CRL" {
			continue
		}
		list, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CRL %d: %w", len(out)+1, err)
		}
		c, err := NewCRL(list, source)
		if err != nil {
			return nil, fmt.Errorf("CRL %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New(`no PEM block of type "X509 CRL" found`)
	}
	return out, nil
}

// NewCRL checks that list is a complete CRL this package can apply (no
// Issuing Distribution Point, no Delta CRL Indicator, no other critical
// extension, no indirect entries) and indexes its entries. It does not check
// the signature: that needs the issuing CA, which Verify takes.
func NewCRL(list *x509.RevocationList, source string) (*CRL, error) {
	for _, ext := range list.Extensions {
		switch {
		case ext.Id.Equal(oidIssuingDistPoint):
			return nil, errors.New("CRL has an Issuing Distribution Point (partial CRLs are not supported)")
		case ext.Id.Equal(oidDeltaCRLIndicator):
			return nil, errors.New("CRL is a delta CRL (not supported)")
		case ext.Id.Equal(oidAuthorityKeyID), ext.Id.Equal(oidCRLNumber):
		case ext.Critical:
			return nil, fmt.Errorf("CRL has an unknown critical extension %v", ext.Id)
		}
	}
	c := &CRL{List: list, Source: source, revoked: make(map[string]x509.RevocationListEntry, len(list.RevokedCertificateEntries))}
	for _, e := range list.RevokedCertificateEntries {
		for _, ext := range e.Extensions {
			switch {
			case ext.Id.Equal(oidEntryCertIssuer):
				return nil, errors.New("CRL is indirect (an entry names another issuer; not supported)")
			case ext.Id.Equal(oidEntryReasonCode), ext.Id.Equal(oidEntryInvalidityDate):
			case ext.Critical:
				return nil, fmt.Errorf("CRL entry %s has an unknown critical extension %v", serialText(e.SerialNumber), ext.Id)
			}
		}
		if e.SerialNumber != nil {
			c.revoked[string(e.SerialNumber.Bytes())] = e
		}
	}
	return c, nil
}

// Revoked returns the CRL's entry for serial, if the CRL lists it.
func (c *CRL) Revoked(serial *big.Int) (x509.RevocationListEntry, bool) {
	if serial == nil {
		return x509.RevocationListEntry{}, false
	}
	e, ok := c.revoked[string(serial.Bytes())]
	return e, ok
}

// IssuedBy reports whether the CRL names issuer as its issuer: the same
// subject, and the same key identifier when both carry one. It is the cheap
// test that picks candidate CRLs; Verify proves it.
func (c *CRL) IssuedBy(issuer *x509.Certificate) bool {
	if !bytes.Equal(c.List.RawIssuer, issuer.RawSubject) {
		return false
	}
	if len(c.List.AuthorityKeyId) > 0 && len(issuer.SubjectKeyId) > 0 {
		return bytes.Equal(c.List.AuthorityKeyId, issuer.SubjectKeyId)
	}
	return true
}

// Verify checks that issuer issued and signed the CRL: IssuedBy, the
// issuer's cRLSign key usage, and the signature. Results are cached per
// issuer certificate.
func (c *CRL) Verify(issuer *x509.Certificate) error {
	if !c.IssuedBy(issuer) {
		return fmt.Errorf("CRL issuer %q is not the certificate's issuer %q", c.List.Issuer, issuer.Subject)
	}
	fp := sha256.Sum256(issuer.Raw)
	c.mu.Lock()
	err, ok := c.verdicts[fp]
	c.mu.Unlock()
	if ok {
		return err
	}
	// CheckSignatureFrom checks cRLSign (when the issuer has a KeyUsage) and
	// the signature; the names were compared above.
	if err = c.List.CheckSignatureFrom(issuer); err != nil {
		err = fmt.Errorf("%w %q: %v", errCRLNoIssuerSignature, issuer.Subject, err)
	}
	c.mu.Lock()
	if c.verdicts == nil || len(c.verdicts) >= maxVerdicts {
		c.verdicts = make(map[[32]byte]error)
	}
	c.verdicts[fp] = err
	c.mu.Unlock()
	return err
}

// crlFreshness is where a CRL stands in time.
type crlFreshness int

const (
	crlFresh       crlFreshness = iota // thisUpdate <= now < nextUpdate, or no nextUpdate
	crlStale                           // past nextUpdate but within the grace period: still used
	crlExpired                         // past nextUpdate and the grace period: not used
	crlNotYetValid                     // thisUpdate is in the future: not used
)

// freshness places the CRL in time. With enforce false an expired CRL stays
// usable forever (crlStale).
func (c *CRL) freshness(now time.Time, enforce bool, grace time.Duration) crlFreshness {
	if c.List.ThisUpdate.After(now.Add(clockSkew)) {
		return crlNotYetValid
	}
	next := c.List.NextUpdate
	if next.IsZero() || now.Before(next) {
		return crlFresh
	}
	if !enforce || now.Before(next.Add(grace)) {
		return crlStale
	}
	return crlExpired
}

// serialText formats a serial number as Identity.Serial does: lowercase hex.
func serialText(n *big.Int) string {
	if n == nil {
		return "<none>"
	}
	return n.Text(16)
}
