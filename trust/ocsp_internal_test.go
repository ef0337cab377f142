package trust

import (
	"testing"
	"time"
)

// Responses are refreshed as CRLs are (90 % of the time left, clamped to
// [10 min, 24 h]), but always before they expire, and never sooner than
// 30 s apart.
func TestOCSPRefreshAfter(t *testing.T) {
	now := time.Now()
	tests := []struct {
		valid, interval, want time.Duration
	}{
		{7 * 24 * time.Hour, 0, MaxCRLRefresh},
		{time.Hour, 0, 54 * time.Minute},
		{20 * time.Minute, 0, 18 * time.Minute},
		{5 * time.Minute, 0, 270 * time.Second}, // under MinCRLRefresh: still before nextUpdate
		{20 * time.Second, 0, minOCSPRefresh},   // the floor
		{30 * time.Minute, time.Hour, 27 * time.Minute},
		{time.Hour, 10 * time.Minute, 10 * time.Minute},
	}
	for _, tt := range tests {
		st := &OCSPStatus{ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(tt.valid)}
		if got := ocspRefreshAfter(st, now, tt.interval); got != tt.want {
			t.Errorf("validity %v, interval %v: refresh after %v, want %v", tt.valid, tt.interval, got, tt.want)
		}
	}
	// No nextUpdate: used for MinCRLRefresh after thisUpdate, refreshed before.
	st := &OCSPStatus{ThisUpdate: now}
	if got := ocspRefreshAfter(st, now, 0); got != 9*time.Minute {
		t.Errorf("no nextUpdate: %v, want 9m", got)
	}
	if st.usableAt(now.Add(11*time.Minute)) != ReasonOCSPExpired {
		t.Error("a response without nextUpdate is used past MinCRLRefresh")
	}
}

func TestCheckFetchURL(t *testing.T) {
	opts := DefaultFetchOptions()
	for _, tt := range []struct{ url, reason string }{
		{"http://ocsp.example.com", ""},
		{"http://203.0.113.7:8080/ocsp", ReasonURLRefused}, // documentation range
		{"http://127.0.0.1/ocsp", ReasonURLRefused},
		{"http://0x7f.1/", ReasonURLRefused},
		{"ldap://ocsp.example.com", ReasonSchemeNotFetched},
	} {
		if r, err := CheckFetchURL(tt.url, opts); r != tt.reason || (r == "") != (err == nil) {
			t.Errorf("CheckFetchURL(%q) = %q, %v; want %q", tt.url, r, err, tt.reason)
		}
	}
}
