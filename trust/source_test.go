package trust_test

import (
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/trust"
)

// A FileSource whose files the caller loads: Record of a failure keeps the
// material and makes the state stale; a success makes it ok again; a
// certificate past its NotAfter is expired whatever the last load did.
func TestFileSourceRecord(t *testing.T) {
	ca := newCA(t, "File Source CA")
	src := sources(t, newLeaf(t, ca, "srv.test", x509.ExtKeyUsageServerAuth, nil), nil, ca)
	m, err := trust.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	f := trust.FileSourceOf(src, m)
	if st := f.Status(); st.State != trust.StateOK || st.Kind != trust.SourceFile || st.Where != src.CertFile || st.Updates != 1 || f.Material() != m {
		t.Fatalf("first status = %+v", st)
	}
	if f.Changes() != nil {
		t.Error("a FileSource signals changes by itself")
	}
	f.Record(nil, errors.New("tls.key: does not match certificate"))
	if st := f.Status(); st.State != trust.StateStale || !st.Ready() || st.Failures != 1 || st.LastError == nil || f.Material() != m {
		t.Errorf("after a failed load: %+v", st)
	}
	m2, err := trust.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	f.Record(m2, nil)
	if st := f.Status(); st.State != trust.StateOK || st.Updates != 2 || st.LastError != nil || f.Material() != m2 {
		t.Errorf("after a good load: %+v", st)
	}

	expired := sources(t, newLeaf(t, ca, "old.test", x509.ExtKeyUsageServerAuth, func(c *x509.Certificate) {
		c.NotBefore, c.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
	}), nil, ca)
	em, err := trust.Load(expired)
	if err != nil {
		t.Fatal(err)
	}
	if st := trust.FileSourceOf(expired, em).Status(); st.State != trust.StateExpired || st.Ready() {
		t.Errorf("an expired certificate: %+v", st)
	}
}

func TestCheckSPIFFEAddr(t *testing.T) {
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "")
	for addr, want := range map[string]string{
		"/run/spire/agent.sock":        "unix:///run/spire/agent.sock",
		"unix:///run/spire/agent.sock": "unix:///run/spire/agent.sock",
		"tcp://127.0.0.1:8081":         "tcp://127.0.0.1:8081",
	} {
		if got, err := trust.CheckSPIFFEAddr(addr); err != nil || got != want {
			t.Errorf("CheckSPIFFEAddr(%q) = %q, %v; want %q", addr, got, err, want)
		}
	}
	for addr, want := range map[string]string{
		"":                 "set SPIFFE_ENDPOINT_SOCKET",
		"run/agent.sock":   "invalid address",
		"tcp://host:8081":  "invalid address",
		"http://127.0.0.1": "invalid address",
	} {
		_, err := trust.CheckSPIFFEAddr(addr)
		var se *trust.SPIFFEError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckSPIFFEAddr(%q) = %v, want a *SPIFFEError containing %q", addr, err, want)
		}
	}
}
