package audit

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestStreamClosedFields(t *testing.T) {
	f := StreamClosedFields(3, 4, time.Now().Add(-2*time.Second), nil)
	if f[Event] != StreamClosed || f[BytesIn] != int64(3) || f[BytesOut] != int64(4) {
		t.Errorf("fields %v", f)
	}
	if ms, _ := f[DurationMS].(int64); ms < 2000 {
		t.Errorf("duration_ms %v, want at least 2000", f[DurationMS])
	}
	if _, ok := f[Error]; ok {
		t.Error("an error field without an error")
	}
	if f := StreamClosedFields(0, 0, time.Now(), errors.New("reset")); f[Error] != "reset" {
		t.Errorf("error field %v", f[Error])
	}
}

func TestNewSessionID(t *testing.T) {
	seen := map[string]bool{}
	for range 10000 {
		id := NewSessionID()
		if len(id) != 8 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Fatalf("NewSessionID() = %q, want 8 lowercase hex digits", id)
		}
		if seen[id] {
			t.Fatalf("NewSessionID() repeated %q", id)
		}
		seen[id] = true
	}
}
