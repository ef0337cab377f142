package trust

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"slices"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
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
		VerifyConnection: verifyPeer(x509.ExtKeyUsageClientAuth, m, sc.opts),
	}
	if st := sc.opts.stapler; st != nil {
		// The staple changes under one material (it is renewed before its
		// nextUpdate), so it is attached per handshake.
		cfg.Certificates = nil
		cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			c := m.Certificate
			c.OCSPStaple = st.Staple(c.Leaf)
			return &c, nil
		}
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
	m := s.Material()
	cfg := &tls.Config{
		MinVersion:       minVersion,
		CipherSuites:     cipherSuites,
		ServerName:       serverName,
		NextProtos:       slices.Clone(nextProtos),
		VerifyConnection: verifyPeer(x509.ExtKeyUsageServerAuth, m, o),
	}
	if !o.serverID.IsZero() {
		// The server is known by its SPIFFE ID, not by a DNS name:
		// crypto/tls would check serverName against the DNS SANs, so the
		// chain is verified in VerifyConnection instead (verifyServer),
		// against the same roots and with the same usage.
		cfg.InsecureSkipVerify = true
	}
	if m != nil {
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
	revocation    *RevocationChecker
	serverID      spiffeid.ID // client: the server's required SPIFFE ID
	requireStaple bool        // client: refuse a server that staples no OCSP response
	stapler       *Stapler    // server: staples its own OCSP response
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

// WithServerSPIFFEID makes ClientConfig require the server's certificate to
// carry exactly one URI SAN, the SPIFFE ID id, in place of checking the
// server name against its DNS SANs. The chain is still verified against the
// material's CA pool (and, for SPIFFE material, against the bundle of id's
// trust domain), with EKU serverAuth. A zero id requires nothing.
func WithServerSPIFFEID(id spiffeid.ID) ConfigOption {
	return func(o *configOptions) { o.serverID = id }
}

// WithRequireOCSPStaple makes ClientConfig refuse a server that staples no
// OCSP response. A stapled response is always verified when present, and a
// server certificate with the TLS feature status_request (must-staple) always
// needs one, with or without this option.
func WithRequireOCSPStaple() ConfigOption {
	return func(o *configOptions) { o.requireStaple = true }
}

// WithStapler makes ServerConfig staple st's current OCSP response for the
// server's certificate to every handshake that asks for one (crypto/tls
// sends it only to clients that offer status_request). A nil st staples
// nothing.
func WithStapler(st *Stapler) ConfigOption {
	return func(o *configOptions) { o.stapler = st }
}

// verifyPeer returns a VerifyConnection hook for material m that checks the
// peer's leaf for usage, an X.509-SVID against its trust domain's bundle if
// m is SPIFFE material, the server's SPIFFE ID and stapled OCSP response on
// the client, then the chains for revocation if o.revocation is set. It runs
// on every handshake, resumed or not, which VerifyPeerCertificate does not.
func verifyPeer(usage x509.ExtKeyUsage, m *Material, o configOptions) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		leaf := peerLeaf(cs)
		if leaf == nil {
			return errNoPeerCertificate
		}
		chains := cs.VerifiedChains
		if !o.serverID.IsZero() && usage == x509.ExtKeyUsageServerAuth {
			var err error
			if chains, err = verifyServer(cs.PeerCertificates, m); err != nil {
				return err
			}
		}
		if err := CheckLeaf(leaf, usage); err != nil {
			return err
		}
		if m != nil && m.SPIFFE != nil {
			id, svidChains, err := verifySVID(cs.PeerCertificates, m.SPIFFE, usage)
			if err != nil {
				return err
			}
			chains = svidChains
			if !o.serverID.IsZero() && usage == x509.ExtKeyUsageServerAuth && id != o.serverID {
				return &SPIFFEIDError{Want: o.serverID.String(), Got: id.String()}
			}
		} else if !o.serverID.IsZero() && usage == x509.ExtKeyUsageServerAuth {
			if err := checkSPIFFEID(leaf, o.serverID); err != nil {
				return err
			}
		}
		if usage == x509.ExtKeyUsageServerAuth {
			if err := checkStaple(cs.OCSPResponse, m.extendChain(firstChain(chains)), o.requireStaple, time.Now()); err != nil {
				return err
			}
		}
		if o.revocation != nil {
			return o.revocation.CheckChains(chains)
		}
		return nil
	}
}

// verifyServer verifies the server's presented chain as crypto/tls would,
// but without a server name: against m's CA pool, the other presented
// certificates as intermediates, EKU serverAuth.
func verifyServer(certs []*x509.Certificate, m *Material) ([][]*x509.Certificate, error) {
	if len(certs) == 0 {
		return nil, errNoPeerCertificate
	}
	roots := x509.NewCertPool() // no material: nothing verifies
	if m != nil {
		roots = m.CAPool
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	chains, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		return nil, &tls.CertificateVerificationError{UnverifiedCertificates: certs, Err: err}
	}
	return chains, nil
}

// checkSPIFFEID checks that leaf names exactly one URI SAN, and that it is want.
func checkSPIFFEID(leaf *x509.Certificate, want spiffeid.ID) error {
	got, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return &SPIFFEIDError{Want: want.String(), Got: "(" + err.Error() + ")"}
	}
	if got != want {
		return &SPIFFEIDError{Want: want.String(), Got: got.String()}
	}
	return nil
}

// firstChain returns the first of chains, or nil.
func firstChain(chains [][]*x509.Certificate) []*x509.Certificate {
	if len(chains) == 0 {
		return nil
	}
	return chains[0]
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
