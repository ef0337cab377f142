package trust

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"strings"
	"syscall"
)

// Reasons a leaf fails CheckLeaf; UsageError.Reason holds one of them, and
// FailureReason returns it unchanged.
const (
	ReasonBadKeyUsage = "bad_key_usage"
	ReasonBadEKU      = "bad_eku"
	ReasonCALeaf      = "ca_certificate" // a CA certificate presented as a client certificate

	ReasonSPIFFEIDMismatch = "spiffe_id_mismatch" // the server's SPIFFE ID is not the one required
	ReasonBadSVID          = "bad_svid"           // not a valid X.509-SVID for its trust domain's bundle
)

// UsageError is returned by CheckLeaf when a leaf may not be used as asked.
type UsageError struct {
	Reason string // ReasonBadKeyUsage, ReasonBadEKU or ReasonCALeaf
	Detail string // a few words on what the leaf carries, never its contents
}

func (e *UsageError) Error() string {
	return "trust: certificate usage refused: " + e.Detail
}

// CheckLeaf enforces what crypto/x509 Verify does not: the leaf must carry
// KeyUsage digitalSignature, and an extended key usage extension that names
// usage explicitly. A leaf without the EKU extension (which Verify accepts as
// any usage) is refused, and so is one whose only EKU is
// x509.ExtKeyUsageAny. A client certificate (usage clientAuth) must not be
// a CA certificate (basic constraints CA:TRUE): a CA's key signs
// certificates, and a client that holds one is not an end entity. Errors
// are *UsageError; a nil leaf is refused as no certificate.
func CheckLeaf(leaf *x509.Certificate, usage x509.ExtKeyUsage) error {
	if leaf == nil {
		return errNoPeerCertificate
	}
	if usage == x509.ExtKeyUsageClientAuth && leaf.BasicConstraintsValid && leaf.IsCA {
		return &UsageError{Reason: ReasonCALeaf, Detail: "a CA certificate (basic constraints CA:TRUE) is not a client certificate"}
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return &UsageError{Reason: ReasonBadKeyUsage, Detail: "key usage lacks digitalSignature"}
	}
	if len(leaf.ExtKeyUsage) == 0 && len(leaf.UnknownExtKeyUsage) == 0 {
		return &UsageError{Reason: ReasonBadEKU, Detail: "no extended key usage"}
	}
	for _, u := range leaf.ExtKeyUsage {
		if u == usage {
			return nil
		}
	}
	return &UsageError{Reason: ReasonBadEKU, Detail: "extended key usage lacks " + ekuName(usage)}
}

func ekuName(u x509.ExtKeyUsage) string {
	switch u {
	case x509.ExtKeyUsageServerAuth:
		return "serverAuth"
	case x509.ExtKeyUsageClientAuth:
		return "clientAuth"
	default:
		return fmt.Sprintf("usage %d", int(u))
	}
}

// FailureReason classifies a handshake error into a short, stable snake_case
// reason for the handshake_failed audit line. It returns one of: "timeout",
// "unknown_authority", "expired_or_not_yet_valid", "bad_chain" (the chain is
// otherwise invalid: CA not allowed to sign, name constraints, unhandled
// critical extension, insecure algorithm), "bad_key_usage", "bad_eku",
// "ca_certificate" (a CA certificate presented as a client certificate),
// "name_mismatch", "revoked", "crl_unavailable", "ocsp_unavailable",
// "ocsp_staple_missing", "ocsp_staple_invalid", "ocsp_unknown" (a stapled
// response says unknown), "spiffe_id_mismatch" (not the server SPIFFE ID the
// client requires), "bad_svid" (not an X.509-SVID of a trust domain we hold
// a bundle for, or not chaining to that domain's bundle),
// "no_client_certificate", "protocol_version",
// "no_common_alpn", "eof", "not_tls", "peer_alert_<alert>" (the peer refused
// us with that TLS alert, e.g. "peer_alert_bad_certificate",
// "peer_alert_unknown_ca"), or "other". A nil error gives "".
//
// Errors are classified by type. crypto/tls has no type for a missing
// client certificate, an unsupported protocol version or a failed ALPN
// negotiation; those three are recognised by their stdlib message text as a
// last resort (see textReasons). A received alert is a *net.OpError whose
// Err has crypto/tls's unexported alert type; it is read by reflection on
// that type, not by text.
func FailureReason(err error) string {
	if err == nil {
		return ""
	}
	if r := certReason(err); r != "" {
		return r
	}
	if a, ok := alertOf(err); ok {
		switch a {
		case alertProtocolVersion:
			return "protocol_version"
		case alertNoApplicationProtocol:
			return "no_common_alpn"
		}
		return "peer_alert_" + alertName(a)
	}
	if _, ok := errors.AsType[tls.RecordHeaderError](err); ok {
		return "not_tls"
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return "timeout"
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return "timeout"
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed) {
		return "eof"
	}
	if errors.Is(err, errNoPeerCertificate) {
		return "no_client_certificate"
	}
	msg := err.Error()
	for _, tr := range textReasons {
		if strings.Contains(msg, tr.text) {
			return tr.reason
		}
	}
	return "other"
}

// certReason classifies certificate verification errors, or returns "".
func certReason(err error) string {
	if ue, ok := errors.AsType[*UsageError](err); ok {
		return ue.Reason
	}
	if _, ok := errors.AsType[*RevokedError](err); ok {
		return ReasonRevoked
	}
	if ue, ok := errors.AsType[*UnavailableError](err); ok {
		if ue.OCSP {
			return ReasonOCSPUnavailable
		}
		return ReasonCRLUnavailable
	}
	if se, ok := errors.AsType[*StapleError](err); ok {
		return se.Reason
	}
	if _, ok := errors.AsType[*SPIFFEIDError](err); ok {
		return ReasonSPIFFEIDMismatch
	}
	if _, ok := errors.AsType[*SPIFFEVerifyError](err); ok {
		return ReasonBadSVID
	}
	if _, ok := errors.AsType[x509.HostnameError](err); ok {
		return "name_mismatch"
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return "unknown_authority"
	}
	if _, ok := errors.AsType[x509.SystemRootsError](err); ok {
		return "unknown_authority"
	}
	if ce, ok := errors.AsType[x509.CertificateInvalidError](err); ok {
		switch ce.Reason {
		case x509.Expired:
			return "expired_or_not_yet_valid"
		case x509.IncompatibleUsage:
			return ReasonBadEKU
		default:
			return "bad_chain"
		}
	}
	if _, ok := errors.AsType[x509.UnhandledCriticalExtension](err); ok {
		return "bad_chain"
	}
	if _, ok := errors.AsType[x509.InsecureAlgorithmError](err); ok {
		return "bad_chain"
	}
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return "bad_chain"
	}
	return ""
}

// textReasons are crypto/tls (Go 1.26) handshake errors that have no type,
// matched by message as a last resort. Each entry names its source.
var textReasons = []struct{ text, reason string }{
	// handshake_server.go processCertsFromClient: errors.New
	{"tls: client didn't provide a certificate", "no_client_certificate"},
	// handshake_server.go: fmt.Errorf("tls: client offered only unsupported versions: %x")
	{"tls: client offered only unsupported versions", "protocol_version"},
	// handshake_client.go: fmt.Errorf("tls: server selected unsupported protocol version %x")
	{"tls: server selected unsupported protocol version", "protocol_version"},
	// handshake_server.go negotiateALPN: fmt.Errorf("tls: client requested unsupported application protocols (%q)")
	{"tls: client requested unsupported application protocols", "no_common_alpn"},
	// handshake_client.go checkALPN: errors.New
	{"tls: server selected unadvertised ALPN protocol", "no_common_alpn"},
}

// TLS alert numbers (RFC 8446 section 6, RFC 5246 section 7.2).
const (
	alertProtocolVersion       = 70
	alertNoApplicationProtocol = 120
)

var alertNames = map[uint8]string{
	0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac",
	22: "record_overflow", 40: "handshake_failure", 42: "bad_certificate",
	43: "unsupported_certificate", 44: "certificate_revoked",
	45: "certificate_expired", 46: "certificate_unknown",
	47: "illegal_parameter", 48: "unknown_ca", 49: "access_denied",
	50: "decode_error", 51: "decrypt_error", 70: "protocol_version",
	71: "insufficient_security", 80: "internal_error",
	86: "inappropriate_fallback", 90: "user_canceled",
	109: "missing_extension", 110: "unsupported_extension",
	112: "unrecognized_name", 113: "bad_certificate_status_response",
	115: "unknown_psk_identity", 116: "certificate_required",
	120: "no_application_protocol", 121: "ech_required",
}

func alertName(a uint8) string {
	if n, ok := alertNames[a]; ok {
		return n
	}
	return fmt.Sprintf("%d", a)
}

// alertOf returns the TLS alert the peer sent, if err carries one. Over TCP
// crypto/tls reports a received alert as &net.OpError{Op: "remote error",
// Err: alert(n)} with an unexported uint8 type; QUIC uses tls.AlertError.
func alertOf(err error) (uint8, bool) {
	if ae, ok := errors.AsType[tls.AlertError](err); ok {
		return uint8(ae), true
	}
	oe, ok := errors.AsType[*net.OpError](err)
	if !ok || oe.Op != "remote error" || oe.Err == nil {
		return 0, false
	}
	t := reflect.TypeOf(oe.Err)
	if t.PkgPath() != "crypto/tls" || t.Kind() != reflect.Uint8 {
		return 0, false
	}
	return uint8(reflect.ValueOf(oe.Err).Uint()), true
}
