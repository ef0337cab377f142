package trust_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/tunnel-dev/tunnel/trust"
)

func TestCheckLeaf(t *testing.T) {
	ca := newCA(t, "CA")
	tests := []struct {
		name   string
		mod    func(*x509.Certificate)
		usage  x509.ExtKeyUsage
		reason string // "" = accepted
	}{
		{name: "client ok", usage: x509.ExtKeyUsageClientAuth},
		{name: "server wanted", usage: x509.ExtKeyUsageServerAuth, reason: trust.ReasonBadEKU},
		{name: "both EKUs", usage: x509.ExtKeyUsageServerAuth, mod: func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
		}},
		{name: "any plus client", usage: x509.ExtKeyUsageClientAuth, mod: func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageAny, x509.ExtKeyUsageClientAuth}
		}},
		{name: "any only", usage: x509.ExtKeyUsageClientAuth, reason: trust.ReasonBadEKU, mod: func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
		}},
		{name: "no EKU", usage: x509.ExtKeyUsageClientAuth, reason: trust.ReasonBadEKU, mod: func(c *x509.Certificate) {
			c.ExtKeyUsage = nil
		}},
		{name: "unknown EKU only", usage: x509.ExtKeyUsageClientAuth, reason: trust.ReasonBadEKU, mod: func(c *x509.Certificate) {
			c.ExtKeyUsage = nil
			c.UnknownExtKeyUsage = []asn1.ObjectIdentifier{{1, 2, 3, 4}}
		}},
		{name: "no key usage", usage: x509.ExtKeyUsageClientAuth, reason: trust.ReasonBadKeyUsage, mod: func(c *x509.Certificate) {
			c.KeyUsage = 0
		}},
		{name: "key encipherment only", usage: x509.ExtKeyUsageClientAuth, reason: trust.ReasonBadKeyUsage, mod: func(c *x509.Certificate) {
			c.KeyUsage = x509.KeyUsageKeyEncipherment
		}},
		{name: "CA as a client", usage: x509.ExtKeyUsageClientAuth, reason: trust.ReasonCALeaf, mod: func(c *x509.Certificate) {
			c.IsCA, c.BasicConstraintsValid = true, true
			c.KeyUsage |= x509.KeyUsageCertSign
		}},
		{name: "CA:FALSE client", usage: x509.ExtKeyUsageClientAuth, mod: func(c *x509.Certificate) {
			c.IsCA, c.BasicConstraintsValid = false, true
		}},
		{name: "CA as a server is not this check's business", usage: x509.ExtKeyUsageServerAuth, mod: func(c *x509.Certificate) {
			c.IsCA, c.BasicConstraintsValid = true, true
			c.KeyUsage |= x509.KeyUsageCertSign
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaf := newLeaf(t, ca, "app1", x509.ExtKeyUsageClientAuth, tt.mod)
			err := trust.CheckLeaf(leaf.cert, tt.usage)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("CheckLeaf = %v, want nil", err)
				}
				return
			}
			ue, ok := errors.AsType[*trust.UsageError](err)
			if !ok || ue.Reason != tt.reason {
				t.Fatalf("CheckLeaf = %v, want *UsageError with reason %q", err, tt.reason)
			}
		})
	}
	if err := trust.CheckLeaf(nil, x509.ExtKeyUsageClientAuth); err == nil {
		t.Error("CheckLeaf(nil) = nil, want error")
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestFailureReasonTypes(t *testing.T) {
	ca := newCA(t, "CA")
	verr := func(err error) error {
		return fmt.Errorf("handshake: %w", &tls.CertificateVerificationError{Err: err})
	}
	tests := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{verr(x509.UnknownAuthorityError{}), "unknown_authority"},
		{verr(x509.CertificateInvalidError{Reason: x509.Expired}), "expired_or_not_yet_valid"},
		{verr(x509.CertificateInvalidError{Reason: x509.IncompatibleUsage}), "bad_eku"},
		{verr(x509.CertificateInvalidError{Reason: x509.NotAuthorizedToSign}), "bad_chain"},
		{verr(x509.HostnameError{Certificate: ca.cert, Host: "x"}), "name_mismatch"},
		{&trust.UsageError{Reason: trust.ReasonBadKeyUsage}, "bad_key_usage"},
		{tls.AlertError(42), "peer_alert_bad_certificate"},
		{tls.AlertError(70), "protocol_version"},
		{tls.AlertError(120), "no_common_alpn"},
		{tls.AlertError(200), "peer_alert_200"},
		{tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, "not_tls"},
		{context.DeadlineExceeded, "timeout"},
		{&net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, "timeout"},
		{&net.OpError{Op: "read", Err: timeoutErr{}}, "timeout"},
		{io.EOF, "eof"},
		{fmt.Errorf("x: %w", io.ErrUnexpectedEOF), "eof"},
		{&net.OpError{Op: "read", Err: syscall.ECONNRESET}, "eof"},
		{&net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")}, "other"},
		{errors.New("tls: client didn't provide a certificate"), "no_client_certificate"},
		{errors.New("something else"), "other"},
	}
	for _, tt := range tests {
		if got := trust.FailureReason(tt.err); got != tt.want {
			t.Errorf("FailureReason(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}
