package client

import (
	"testing"
	"time"
)

func TestParseForward(t *testing.T) {
	tests := []struct {
		in      string
		want    Forward
		wantErr bool
	}{
		{in: "127.0.0.1:15432=db", want: Forward{Listen: "127.0.0.1:15432", Route: "db"}},
		{in: "16379=cache", want: Forward{Listen: "127.0.0.1:16379", Route: "cache"}},
		{in: "[::1]:5432=db", want: Forward{Listen: "[::1]:5432", Route: "db"}},
		{in: "0.0.0.0:5432=db", want: Forward{Listen: "0.0.0.0:5432", Route: "db"}},
		{in: "localhost:5432=db", want: Forward{Listen: "localhost:5432", Route: "db"}},
		{in: "127.0.0.1:0=db", want: Forward{Listen: "127.0.0.1:0", Route: "db"}},
		{in: "5432", wantErr: true},
		{in: "5432=", wantErr: true},
		{in: "=db", wantErr: true},
		{in: "70000=db", wantErr: true},
		{in: "db.example.com:5432=db", wantErr: true},
		{in: "127.0.0.1:5432=d/b", wantErr: true},
		{in: "::1:5432=db", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseForward(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseForward(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && got != tt.want {
			t.Errorf("ParseForward(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestBackoffFullJitter(t *testing.T) {
	k := newSessionKeeper(Config{BackoffMin: DefaultBackoffMin, BackoffMax: DefaultBackoffMax}, newRotation([]string{"x:1"}), nil)
	for n := range 40 {
		ceil := DefaultBackoffMax
		if n < 30 {
			ceil = min(DefaultBackoffMin<<n, DefaultBackoffMax)
		}
		var maxSeen time.Duration
		for range 200 {
			d := k.backoff(n)
			if d <= 0 || d > ceil {
				t.Fatalf("backoff(%d) = %v, want in (0, %v]", n, d, ceil)
			}
			maxSeen = max(maxSeen, d)
		}
		// Full jitter spreads over the whole range, not just near the ceiling or the floor.
		if maxSeen < ceil/2 {
			t.Errorf("backoff(%d): max of 200 draws %v, want above %v", n, maxSeen, ceil/2)
		}
	}
}
