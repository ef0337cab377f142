package alive

import (
	"errors"
	"testing"
	"time"
)

func TestSignal(t *testing.T) {
	s := &Signal{Name: "accept loop"}
	now := time.Now()
	if err := s.Check(now); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("Check before any Beat = %v, want ErrNotStarted", err)
	}
	s.Beat(time.Second)
	if err := s.Check(time.Now()); err != nil {
		t.Fatalf("Check right after Beat(1s) = %v, want nil", err)
	}
	if err := s.Check(time.Now().Add(2 * time.Second)); err == nil {
		t.Fatal("Check 2s after Beat(1s) = nil, want a late beat")
	}
	s.Stop()
	if err := s.Check(time.Now()); !errors.Is(err, ErrStopped) {
		t.Fatalf("Check after Stop = %v, want ErrStopped", err)
	}
}
