package trust

import (
	"crypto/tls"
	"testing"
)

// TestServerConfigCache proves a handshake reuses the config built for the
// current material and that a Swap rebuilds it.
func TestServerConfigCache(t *testing.T) {
	m1 := &Material{Certificate: tls.Certificate{Certificate: [][]byte{{1}}}}
	m2 := &Material{Certificate: tls.Certificate{Certificate: [][]byte{{2}}}}
	s := NewStore(m1)
	outer := ServerConfig(s, []string{ALPNTunnel})
	get := func() *tls.Config {
		t.Helper()
		cfg, err := outer.GetConfigForClient(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	a, b := get(), get()
	if a != b {
		t.Error("two handshakes on the same material built two configs")
	}
	if a.Certificates[0].Certificate[0][0] != 1 || a.ClientAuth != tls.RequireAndVerifyClientCert ||
		a.MinVersion != tls.VersionTLS12 || a.VerifyConnection == nil || len(a.CipherSuites) != 6 {
		t.Errorf("built config does not hold the material or the policy: %+v", a)
	}
	s.Swap(m2)
	c := get()
	if c == a || c.Certificates[0].Certificate[0][0] != 2 {
		t.Error("after Swap the handshake did not get a config of the new material")
	}
	s.Swap(nil)
	if _, err := outer.GetConfigForClient(&tls.ClientHelloInfo{}); err == nil {
		t.Error("GetConfigForClient with no material succeeded")
	}
}
