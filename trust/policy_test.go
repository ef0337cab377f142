package trust_test

import (
	"errors"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/trust"
)

func TestRevocationPolicyValidate(t *testing.T) {
	if err := trust.DefaultRevocationPolicy().Validate(); err != nil {
		t.Fatalf("the default policy: %v", err)
	}
	for _, tt := range []struct {
		field, msg string
		edit       func(*trust.RevocationPolicy)
	}{
		{"StaleGrace", "-1s is negative", func(p *trust.RevocationPolicy) { p.StaleGrace = -time.Second }},
		{"RefreshInterval", "10ms: want 0 (from nextUpdate) or at least 1s", func(p *trust.RevocationPolicy) { p.RefreshInterval = 10 * time.Millisecond }},
		{"RefreshInterval", "-1s: want 0 (from nextUpdate) or at least 1s", func(p *trust.RevocationPolicy) { p.RefreshInterval = -time.Second }},
		{"FetchOptions.Timeout", "0s: must be positive", func(p *trust.RevocationPolicy) { p.FetchOptions.Timeout = 0 }},
		{"BootstrapTimeout", "-1s is negative", func(p *trust.RevocationPolicy) { p.BootstrapTimeout = -time.Second }},
		{"FetchOptions.MaxBytes", "10: want 1024 to 1073741824", func(p *trust.RevocationPolicy) { p.FetchOptions.MaxBytes = 10 }},
		{"FetchOptions.MaxBytes", "1073741825: want 1024 to 1073741824", func(p *trust.RevocationPolicy) { p.FetchOptions.MaxBytes = 1<<30 + 1 }},
	} {
		p := trust.DefaultRevocationPolicy()
		tt.edit(&p)
		fe, ok := errors.AsType[*trust.FieldError](p.Validate())
		if !ok || fe.Field != tt.field || fe.Err.Error() != tt.msg {
			t.Errorf("Validate(%s) = %v, want %s: %s", tt.field, p.Validate(), tt.field, tt.msg)
		}
	}
}

func TestRevocationPolicySummary(t *testing.T) {
	p := trust.DefaultRevocationPolicy()
	if got, want := p.Summary(2), "fail-open, full chain, 2 CRL file(s), fetching true"; got != want {
		t.Errorf("Summary = %q, want %q", got, want)
	}
	p.DenyOnUnavailable, p.EndEntityOnly, p.Fetch = true, true, false
	if got, want := p.Summary(0), "fail-closed, leaf only, 0 CRL file(s), fetching false"; got != want {
		t.Errorf("Summary = %q, want %q", got, want)
	}
	for method, want := range map[string]string{
		trust.RevocationOCSP:       "fail-closed, leaf only, OCSP by POST with a nonce",
		trust.RevocationBoth:       "fail-closed, leaf only, 0 CRL file(s), fetching false and OCSP by POST with a nonce",
		trust.RevocationPreferOCSP: "fail-closed, leaf only, OCSP by POST with a nonce preferred, else 0 CRL file(s), fetching false",
	} {
		p.Method = method
		if got := p.Summary(0); got != want {
			t.Errorf("Summary(%s) = %q, want %q", method, got, want)
		}
	}
	p.Method, p.OCSPGET = trust.RevocationOCSP, true
	if got, want := p.Summary(0), "fail-closed, leaf only, OCSP by GET"; got != want {
		t.Errorf("Summary = %q, want %q", got, want)
	}
	p.Disabled = true
	if got := p.Summary(0); got != "disabled" {
		t.Errorf("Summary(disabled) = %q", got)
	}
}
