package trust

import (
	"fmt"
	"time"
)

// FieldError reports a bad value of a RevocationPolicy field: the field, as
// named in the struct ("StaleGrace", "FetchOptions.Timeout"), and what is
// wrong with it.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string {
	return "trust: RevocationPolicy." + e.Field + ": " + e.Err.Error()
}

func (e *FieldError) Unwrap() error { return e.Err }

// Limits of a RevocationPolicy's values.
const (
	minRefreshInterval = time.Second
	minCRLMaxBytes     = 1 << 10
	maxCRLMaxBytes     = 1 << 30
)

// Validate checks p's durations and sizes: no negative grace or bootstrap
// wait, a refresh interval of 0 (from each CRL's nextUpdate) or at least a
// second, a positive fetch timeout, a response cap from 1 KiB to 1 GiB. It
// returns the first bad field as a *FieldError. NewRevocationChecker takes
// a policy as it is: validate one that comes from an operator first.
func (p RevocationPolicy) Validate() error {
	switch {
	case p.StaleGrace < 0:
		return &FieldError{"StaleGrace", fmt.Errorf("%v is negative", p.StaleGrace)}
	case p.RefreshInterval < 0 || p.RefreshInterval > 0 && p.RefreshInterval < minRefreshInterval:
		return &FieldError{"RefreshInterval", fmt.Errorf("%v: want 0 (from nextUpdate) or at least %v", p.RefreshInterval, minRefreshInterval)}
	case p.FetchOptions.Timeout <= 0:
		return &FieldError{"FetchOptions.Timeout", fmt.Errorf("%v: must be positive", p.FetchOptions.Timeout)}
	case p.BootstrapTimeout < 0:
		return &FieldError{"BootstrapTimeout", fmt.Errorf("%v is negative", p.BootstrapTimeout)}
	case p.FetchOptions.MaxBytes < minCRLMaxBytes || p.FetchOptions.MaxBytes > maxCRLMaxBytes:
		return &FieldError{"FetchOptions.MaxBytes", fmt.Errorf("%d: want %d to %d", p.FetchOptions.MaxBytes, minCRLMaxBytes, maxCRLMaxBytes)}
	}
	return nil
}

// Summary is the policy in one line, for the start-up log: "fail-open, full
// chain, 2 CRL file(s), fetching true", and with OCSP "fail-open, full
// chain, OCSP by POST with a nonce". files is how many CRL files are loaded
// beside it.
func (p RevocationPolicy) Summary(files int) string {
	if p.Disabled {
		return "disabled"
	}
	mode := "fail-open"
	if p.DenyOnUnavailable {
		mode = "fail-closed"
	}
	scope := "full chain"
	if p.EndEntityOnly {
		scope = "leaf only"
	}
	crl := fmt.Sprintf("%d CRL file(s), fetching %v", files, p.Fetch)
	ocsp := "OCSP by POST with a nonce"
	if p.OCSPGET {
		ocsp = "OCSP by GET"
	}
	switch p.Method {
	case RevocationOCSP:
		return fmt.Sprintf("%s, %s, %s", mode, scope, ocsp)
	case RevocationBoth:
		return fmt.Sprintf("%s, %s, %s and %s", mode, scope, crl, ocsp)
	case RevocationPreferOCSP:
		return fmt.Sprintf("%s, %s, %s preferred, else %s", mode, scope, ocsp, crl)
	}
	return fmt.Sprintf("%s, %s, %s", mode, scope, crl)
}
