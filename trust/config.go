package trust

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"slices"
	"sync/atomic"
)

// ALPNTunnel is the ALPN protocol of a yamux tunnel session.
const ALPNTunnel = "tunnel/1"

// minVersion is the lowest TLS version either role speaks; Go prefers 1.3.
const minVersion = tls.VersionTLS12

// cipherSuites are the TLS 1.2 suites either role accepts: ECDHE with an
// AEAD. TLS 1.3 suites are not configurable and all are acceptable.
var cipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// errNoMaterial fails a handshake on a Store that holds nothing.
var errNoMaterial = errors.New("trust: no TLS material loaded")

// ServerConfig returns the *tls.Config of the server role. Each handshake
// takes s.Material() once, through GetConfigForClient, so a Swap applies to
// the next handshake and a handshake never pairs an old certificate with a
// new CA pool. The per-handshake config (built once per *Material and cached)
// requires TLS 1.2 or later with ECDHE-AEAD suites for 1.2, requires a client
// certificate verified against the material's CA pool, offers nextProtos, and
// checks the client leaf with CheckLeaf(leaf, x509.ExtKeyUsageClientAuth) in
// VerifyConnection, which runs on resumed handshakes too. Session tickets
// are encrypted with keys of the returned config, so they survive a Swap; a
// resumed session is re-verified against the current material.
//
// The returned config must not be modified; nextProtos is copied. It is safe
// for concurrent handshakes.
func ServerConfig(s *Store, nextProtos []string, opts ...ConfigOption) *tls.Config {
	sc := &serverConfigs{store: s, nextProtos: slices.Clone(nextProtos), opts: collect(opts)}
	return &tls.Config{
		MinVersion:         minVersion,
		CipherSuites:       cipherSuites,
		NextProtos:         sc.nextProtos,
		ClientAuth:         tls.RequireAndVerifyClientCert,
		GetConfigForClient: sc.forClient,
	}
}

// serverConfigs builds and caches the per-handshake server config.
type serverConfigs struct {
	store      *Store
	nextProtos []string                    // read-only after construction
	opts       configOptions               // read-only after construction
	cached     atomic.Pointer[builtConfig] // the config of the latest material seen
}

// builtConfig is a server config and the material it was built from.
type builtConfig struct {
	m   *Material
	cfg *tls.Config
}

func (sc *serverConfigs) forClient(*tls.ClientHelloInfo) (*tls.Config, error) {
	m := sc.store.Material()
	if m == nil {
		return nil, errNoMaterial
	}
	if b := sc.cached.Load(); b != nil && b.m == m {
		return b.cfg, nil
	}
	// Two handshakes racing a Swap may both build; either result is correct.
	cfg := &tls.Config{
		MinVersion:       minVersion,
		CipherSuites:     cipherSuites,
		Certificates:     []tls.Certificate{m.Certificate},
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        m.CAPool,
		NextProtos:       sc.nextProtos,
		VerifyConnection: verifyPeer(x509.ExtKeyUsageClientAuth, sc.opts.revocation),
	}
	sc.cached.Store(&builtConfig{m: m, cfg: cfg})
	return cfg, nil
}

// ClientConfig returns a *tls.Config for one dial of the client role, built
// from the material current at the call: its certificate, RootCAs = its CA
// pool, TLS 1.2 or later with ECDHE-AEAD suites for 1.2, nextProtos, and
// CheckLeaf(leaf, x509.ExtKeyUsageServerAuth) in VerifyConnection. The
// client presents its certificate whenever the server asks, even if the
// server's list of acceptable CAs does not name its issuer (Go would then send
// none), so a refusal is logged on both sides as what it is: an unknown
// authority, not a missing certificate. serverName is required: Go verifies
// the server certificate against it, and a handshake with an empty
// serverName fails. If s holds no material the
// config has no certificate and no roots, and every handshake fails.
//
// The caller owns the returned config; nextProtos is copied.
func ClientConfig(s *Store, serverName string, nextProtos []string, opts ...ConfigOption) *tls.Config {
	o := collect(opts)
	cfg := &tls.Config{
		MinVersion:       minVersion,
		CipherSuites:     cipherSuites,
		ServerName:       serverName,
		NextProtos:       slices.Clone(nextProtos),
		VerifyConnection: verifyPeer(x509.ExtKeyUsageServerAuth, o.revocation),
	}
	if m := s.Material(); m != nil {
		cert := &m.Certificate
		cfg.Certificates = []tls.Certificate{*cert} // informative; GetClientCertificate decides
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cert, nil
		}
		cfg.RootCAs = m.CAPool
	} else {
		cfg.RootCAs = x509.NewCertPool() // never fall back to the system roots
	}
	return cfg
}

// ConfigOption adds a check to the configs of ServerConfig and ClientConfig.
type ConfigOption func(*configOptions)

type configOptions struct {
	revocation *RevocationChecker
}

func collect(opts []ConfigOption) configOptions {
	var o configOptions
	for _, fn := range opts {
		fn(&o)
	}
	return o
}

// WithRevocation checks the peer's verified chains with rc on every
// handshake, after the usage checks. A nil rc checks nothing.
func WithRevocation(rc *RevocationChecker) ConfigOption {
	return func(o *configOptions) { o.revocation = rc }
}

// verifyPeer returns a VerifyConnection hook that checks the peer's leaf for
// usage, then its chains for revocation if rc is set. It runs on every
// handshake, resumed or not, which VerifyPeerCertificate does not.
func verifyPeer(usage x509.ExtKeyUsage, rc *RevocationChecker) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		leaf := peerLeaf(cs)
		if leaf == nil {
			return errNoPeerCertificate
		}
		if err := CheckLeaf(leaf, usage); err != nil {
			return err
		}
		if rc != nil {
			return rc.CheckChains(cs.VerifiedChains)
		}
		return nil
	}
}

var errNoPeerCertificate = errors.New("trust: peer presented no certificate")

// peerLeaf returns the verified leaf of cs, falling back to the first
// presented certificate, or nil.
func peerLeaf(cs tls.ConnectionState) *x509.Certificate {
	if len(cs.VerifiedChains) > 0 && len(cs.VerifiedChains[0]) > 0 {
		return cs.VerifiedChains[0][0]
	}
	if len(cs.PeerCertificates) > 0 {
		return cs.PeerCertificates[0]
	}
	return nil
}
