package trust

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"time"

	"golang.org/x/crypto/ocsp"
)

// OCSP wire details (RFC 6960) that golang.org/x/crypto/ocsp leaves out: the
// nonce extension (RFC 8954) in requests and responses, and a response's
// CertID issuer hashes and responseExtensions, which ocsp.ParseResponse does
// not check or expose.
var (
	oidOCSPNonce = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 2}
	oidSHA1      = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	// oidTLSFeature is the TLS feature extension (RFC 7633); a certificate
	// that lists status_request (5) in it is "must-staple".
	oidTLSFeature = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 24}
	hashOIDs      = map[string]crypto.Hash{
		"1.3.14.3.2.26":          crypto.SHA1,
		"2.16.840.1.101.3.4.2.1": crypto.SHA256,
		"2.16.840.1.101.3.4.2.2": crypto.SHA384,
		"2.16.840.1.101.3.4.2.3": crypto.SHA512,
	}
)

// ocspNonceLen is the nonce length sent: RFC 8954 asks for 32 bytes at most
// and at least 16.
const ocspNonceLen = 16

// Reasons an OCSP response is not usable, in UnavailableError.Why and the
// reason field of ocsp_unavailable lines (besides the fetch reasons shared
// with CRLs: scheme_not_fetched, url_refused, not_fetched_yet, limit_*).
const (
	ReasonOCSPUnknown       = "ocsp_unknown"        // the responder does not know the certificate
	ReasonOCSPFailed        = "ocsp_fetch_failed"   // network, HTTP, size, or a responder error status
	ReasonOCSPBadResponse   = "ocsp_bad_response"   // does not parse, or names another certificate or issuer
	ReasonOCSPBadSignature  = "ocsp_bad_signature"  // not signed by the issuer or a responder it authorised
	ReasonOCSPExpired       = "ocsp_expired"        // past its nextUpdate
	ReasonOCSPNotYetValid   = "ocsp_not_yet_valid"  // thisUpdate in the future
	ReasonOCSPNonceMismatch = "ocsp_nonce_mismatch" // the response echoes another nonce
)

// OCSPResponseError is the error of an OCSP response that is not usable:
// Reason is one of the ReasonOCSP* values.
type OCSPResponseError struct {
	Reason string
	Err    error
}

func (e *OCSPResponseError) Error() string { return "OCSP response refused: " + e.Err.Error() }
func (e *OCSPResponseError) Unwrap() error { return e.Err }

func ocspRefuse(reason, format string, args ...any) error {
	return &OCSPResponseError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// OCSPStatus is a verified OCSP answer for one certificate.
type OCSPStatus struct {
	Status     int // ocsp.Good, ocsp.Revoked or ocsp.Unknown
	ThisUpdate time.Time
	NextUpdate time.Time // zero if the responder gave none
	RevokedAt  time.Time // for ocsp.Revoked
	Reason     int       // the revocation reason code, for ocsp.Revoked
	Raw        []byte    // the DER response, as a server staples it
	Source     string    // the responder URL, or a staple file
}

// usableAt reports where the response stands in time: "" if usable at now,
// or ReasonOCSPExpired / ReasonOCSPNotYetValid. A response without
// nextUpdate is usable for MinCRLRefresh after its thisUpdate (RFC 6960 says
// newer information is always available then).
func (s *OCSPStatus) usableAt(now time.Time) string {
	switch {
	case s.ThisUpdate.After(now.Add(clockSkew)):
		return ReasonOCSPNotYetValid
	case !s.NextUpdate.IsZero() && !now.Before(s.NextUpdate):
		return ReasonOCSPExpired
	case s.NextUpdate.IsZero() && !now.Before(s.ThisUpdate.Add(MinCRLRefresh)):
		return ReasonOCSPExpired
	}
	return ""
}

// Asn.1 forms of RFC 6960 section 4.1.1 (request) and 4.2.1 (response data).
type ocspCertID struct {
	HashAlgorithm pkix.AlgorithmIdentifier
	NameHash      []byte
	IssuerKeyHash []byte
	SerialNumber  *big.Int
}

type ocspRequestASN1 struct {
	TBSRequest ocspTBSRequest
}

type ocspTBSRequest struct {
	Version     int `asn1:"explicit,tag:0,default:0,optional"`
	RequestList []ocspOneRequest
	Extensions  []pkix.Extension `asn1:"explicit,tag:2,optional"`
}

type ocspOneRequest struct {
	Cert ocspCertID
}

type ocspResponseData struct {
	Raw            asn1.RawContent
	Version        int `asn1:"optional,default:0,explicit,tag:0"`
	RawResponderID asn1.RawValue
	ProducedAt     time.Time `asn1:"generalized"`
	Responses      []ocspSingleResponse
	Extensions     []pkix.Extension `asn1:"explicit,tag:1,optional"`
}

type ocspSingleResponse struct {
	CertID     ocspCertID
	Status     asn1.RawValue
	ThisUpdate time.Time        `asn1:"generalized"`
	NextUpdate time.Time        `asn1:"generalized,explicit,tag:0,optional"`
	Extensions []pkix.Extension `asn1:"explicit,tag:1,optional"`
}

// newOCSPRequest returns a DER OCSP request for cert, issued by issuer,
// with SHA-1 CertID hashes (what every responder understands; they are
// identifiers, not signatures) and, if nonce is set, the nonce extension.
func newOCSPRequest(cert, issuer *x509.Certificate, nonce []byte) ([]byte, error) {
	keyHash, err := issuerKeyHash(issuer, crypto.SHA1)
	if err != nil {
		return nil, err
	}
	nameHash := sha1.Sum(issuer.RawSubject)
	req := ocspRequestASN1{TBSRequest: ocspTBSRequest{RequestList: []ocspOneRequest{{Cert: ocspCertID{
		HashAlgorithm: pkix.AlgorithmIdentifier{Algorithm: oidSHA1, Parameters: asn1.RawValue{Tag: asn1.TagNull}},
		NameHash:      nameHash[:],
		IssuerKeyHash: keyHash,
		SerialNumber:  cert.SerialNumber,
	}}}}}
	if nonce != nil {
		v, err := asn1.Marshal(nonce) // the extension's value is an OCTET STRING holding the nonce
		if err != nil {
			return nil, err
		}
		req.TBSRequest.Extensions = []pkix.Extension{{Id: oidOCSPNonce, Value: v}}
	}
	return asn1.Marshal(req)
}

// newNonce returns a fresh random request nonce.
func newNonce() []byte {
	b := make([]byte, ocspNonceLen)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return b
}

// issuerKeyHash hashes the issuer's subjectPublicKey BIT STRING, as a
// CertID's issuerKeyHash and a responder KeyHash are.
func issuerKeyHash(issuer *x509.Certificate, h crypto.Hash) ([]byte, error) {
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(issuer.RawSubjectPublicKeyInfo, &spki); err != nil {
		return nil, fmt.Errorf("issuer public key: %w", err)
	}
	if !h.Available() {
		return nil, fmt.Errorf("hash %v unavailable", h)
	}
	hh := h.New()
	hh.Write(spki.PublicKey.RightAlign())
	return hh.Sum(nil), nil
}

// verifyOCSP parses an OCSP response for cert, issued by issuer, and checks
// everything RFC 6960 asks of a client: a successful response of the basic
// type; a single response for cert's serial whose CertID hashes name issuer;
// signed by issuer itself, or by a delegated responder certificate that
// issuer signed, that carries id-kp-OCSPSigning and is within its validity;
// a responder ID that names the signer; no unknown critical extension; the
// nonce, if one was sent and the response carries one, equal to it (a
// responder that ignores nonces answers without); and thisUpdate/nextUpdate
// around now. source names the response in errors and in the result.
// Errors are *OCSPResponseError, or ocsp.ResponseError for a responder's
// error status (tryLater, unauthorized, ...).
func verifyOCSP(der []byte, cert, issuer *x509.Certificate, nonce []byte, now time.Time, source string) (*OCSPStatus, error) {
	resp, err := ocsp.ParseResponseForCert(der, cert, nil)
	if err != nil {
		var re ocsp.ResponseError
		if errors.As(err, &re) {
			return nil, re
		}
		return nil, ocspRefuse(ReasonOCSPBadResponse, "%v", err)
	}
	var data ocspResponseData
	if rest, err := asn1.Unmarshal(resp.TBSResponseData, &data); err != nil || len(rest) > 0 {
		return nil, ocspRefuse(ReasonOCSPBadResponse, "response data does not parse")
	}
	if err := checkCertID(data.Responses, cert, issuer); err != nil {
		return nil, err
	}
	for _, ext := range data.Extensions {
		switch {
		case ext.Id.Equal(oidOCSPNonce):
			if nonce == nil {
				continue
			}
			var got []byte
			if _, err := asn1.Unmarshal(ext.Value, &got); err != nil {
				got = ext.Value // some responders put the raw nonce in the value
			}
			if !bytes.Equal(got, nonce) {
				return nil, ocspRefuse(ReasonOCSPNonceMismatch, "the response's nonce is not the request's (a replayed response?)")
			}
		case ext.Critical:
			return nil, ocspRefuse(ReasonOCSPBadResponse, "unknown critical response extension %v", ext.Id)
		}
	}
	signer := issuer
	if resp.Certificate != nil && !resp.Certificate.Equal(issuer) {
		// ParseResponseForCert checked the response against this embedded
		// certificate; what remains is whether issuer authorised it.
		signer = resp.Certificate
		if err := checkDelegatedResponder(signer, issuer, now); err != nil {
			return nil, err
		}
	} else if err := resp.CheckSignatureFrom(issuer); err != nil {
		return nil, ocspRefuse(ReasonOCSPBadSignature, "not signed by the issuer %q: %v", truncate(issuer.Subject.String(), 100), err)
	}
	if err := checkResponderID(resp, signer); err != nil {
		return nil, err
	}
	st := &OCSPStatus{Status: resp.Status, ThisUpdate: resp.ThisUpdate, NextUpdate: resp.NextUpdate,
		RevokedAt: resp.RevokedAt, Reason: resp.RevocationReason, Raw: der, Source: source}
	switch st.usableAt(now) {
	case ReasonOCSPNotYetValid:
		return nil, ocspRefuse(ReasonOCSPNotYetValid, "thisUpdate %s is in the future", st.ThisUpdate.UTC().Format(time.RFC3339))
	case ReasonOCSPExpired:
		return nil, ocspRefuse(ReasonOCSPExpired, "expired: nextUpdate %s has passed", nextUpdateText(st))
	}
	return st, nil
}

func nextUpdateText(st *OCSPStatus) string {
	if st.NextUpdate.IsZero() {
		return "(none; thisUpdate " + st.ThisUpdate.UTC().Format(time.RFC3339) + ")"
	}
	return st.NextUpdate.UTC().Format(time.RFC3339)
}

// checkCertID finds the single response for cert's serial, as
// ParseResponseForCert picked it, and checks that its issuer hashes are
// issuer's: a serial alone is not unique across CAs.
func checkCertID(responses []ocspSingleResponse, cert, issuer *x509.Certificate) error {
	for _, r := range responses {
		if r.CertID.SerialNumber == nil || r.CertID.SerialNumber.Cmp(cert.SerialNumber) != 0 {
			continue
		}
		h, ok := hashOIDs[r.CertID.HashAlgorithm.Algorithm.String()]
		if !ok || !h.Available() {
			return ocspRefuse(ReasonOCSPBadResponse, "unsupported CertID hash %v", r.CertID.HashAlgorithm.Algorithm)
		}
		hh := h.New()
		hh.Write(issuer.RawSubject)
		keyHash, err := issuerKeyHash(issuer, h)
		if err != nil {
			return ocspRefuse(ReasonOCSPBadResponse, "%v", err)
		}
		if !bytes.Equal(hh.Sum(nil), r.CertID.NameHash) || !bytes.Equal(keyHash, r.CertID.IssuerKeyHash) {
			return ocspRefuse(ReasonOCSPBadResponse, "the response is for serial %s of another issuer", serialText(cert.SerialNumber))
		}
		return nil
	}
	return ocspRefuse(ReasonOCSPBadResponse, "no response for serial %s", serialText(cert.SerialNumber))
}

// checkDelegatedResponder checks a responder certificate that is not the
// issuer (RFC 6960 section 4.2.2.2): issued and signed by issuer, EKU
// id-kp-OCSPSigning, within its validity at now.
func checkDelegatedResponder(rc, issuer *x509.Certificate, now time.Time) error {
	who := truncate(rc.Subject.String(), 100)
	if !bytes.Equal(rc.RawIssuer, issuer.RawSubject) {
		return ocspRefuse(ReasonOCSPBadSignature, "signed by %q, which the certificate's issuer %q did not issue", who, truncate(issuer.Subject.String(), 100))
	}
	if err := rc.CheckSignatureFrom(issuer); err != nil {
		return ocspRefuse(ReasonOCSPBadSignature, "responder certificate %q is not signed by the issuer: %v", who, err)
	}
	ok := false
	for _, u := range rc.ExtKeyUsage {
		ok = ok || u == x509.ExtKeyUsageOCSPSigning
	}
	if !ok {
		return ocspRefuse(ReasonOCSPBadSignature, "responder certificate %q lacks id-kp-OCSPSigning", who)
	}
	if now.Before(rc.NotBefore) || now.After(rc.NotAfter) {
		return ocspRefuse(ReasonOCSPBadSignature, "responder certificate %q is outside its validity", who)
	}
	return nil
}

// checkResponderID checks that the response's responder ID names signer.
func checkResponderID(resp *ocsp.Response, signer *x509.Certificate) error {
	if resp.RawResponderName != nil {
		if !bytes.Equal(resp.RawResponderName, signer.RawSubject) {
			return ocspRefuse(ReasonOCSPBadSignature, "responder ID names another responder than the signer")
		}
		return nil
	}
	kh, err := issuerKeyHash(signer, crypto.SHA1)
	if err != nil || !bytes.Equal(kh, resp.ResponderKeyHash) {
		return ocspRefuse(ReasonOCSPBadSignature, "responder key hash is not the signer's")
	}
	return nil
}

// mustStaple reports whether c carries the TLS feature extension with
// status_request (RFC 7633): a client must then refuse it without a staple.
func mustStaple(c *x509.Certificate) bool {
	for _, ext := range c.Extensions {
		if !ext.Id.Equal(oidTLSFeature) {
			continue
		}
		var features []int
		if _, err := asn1.Unmarshal(ext.Value, &features); err != nil {
			return true // unreadable: assume the strict meaning
		}
		for _, f := range features {
			if f == 5 { // status_request
				return true
			}
		}
	}
	return false
}

// StapleError is the error of a client handshake whose server stapled no
// OCSP response although one is required, or a response that does not
// verify or is not good.
type StapleError struct {
	Reason string // ReasonStapleMissing, ReasonStapleInvalid or ReasonOCSPUnknown
	Err    error
}

// Reasons of StapleError, also FailureReason's.
const (
	ReasonStapleMissing = "ocsp_staple_missing"
	ReasonStapleInvalid = "ocsp_staple_invalid"
)

func (e *StapleError) Error() string { return "trust: server's OCSP staple: " + e.Err.Error() }
func (e *StapleError) Unwrap() error { return e.Err }

// checkStaple checks a server's stapled OCSP response against its chain
// (leaf first, the issuer next). An absent staple is an error only if
// required or if the leaf is must-staple; a present one must verify, and a
// revoked status is a *RevokedError.
func checkStaple(staple []byte, chain []*x509.Certificate, require bool, now time.Time) error {
	if len(chain) == 0 {
		return nil
	}
	leaf := chain[0]
	if len(staple) == 0 {
		switch {
		case mustStaple(leaf):
			return &StapleError{Reason: ReasonStapleMissing, Err: errors.New("the certificate is must-staple (TLS feature status_request) and the server stapled no OCSP response")}
		case require:
			return &StapleError{Reason: ReasonStapleMissing, Err: errors.New("the server stapled no OCSP response (--require-ocsp-staple)")}
		}
		return nil
	}
	if len(chain) < 2 {
		return &StapleError{Reason: ReasonStapleInvalid, Err: errors.New("a stapled response for a certificate whose issuer is not known cannot be verified")}
	}
	st, err := verifyOCSP(staple, leaf, chain[1], nil, now, "staple")
	if err != nil {
		return &StapleError{Reason: ReasonStapleInvalid, Err: err}
	}
	switch st.Status {
	case ocsp.Good:
		return nil
	case ocsp.Revoked:
		return &RevokedError{Serial: serialText(leaf.SerialNumber), Subject: leaf.Subject.String(), Source: "the server's OCSP staple",
			RevokedAt: st.RevokedAt, Via: viaOCSP}
	default:
		return &StapleError{Reason: ReasonOCSPUnknown, Err: errors.New("the stapled response says the responder does not know the certificate (unknown)")}
	}
}
