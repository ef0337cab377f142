package trust

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/sirupsen/logrus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/tunnel-dev/tunnel/internal/audit"
)

// maxFieldLen caps each identity value that comes from a peer, in bytes.
const maxFieldLen = 256

// Identity is what logs, authorization and metrics see of a verified peer:
// names and fingerprints, never certificate contents. It is a plain value.
type Identity struct {
	CommonName string // the subject's last common name, as crypto/x509 picks it
	// CommonNames are all the subject's common names, in order; more than
	// one makes a cn: rule refuse rather than guess.
	CommonNames []string
	OrgUnits    []string
	DNSNames    []string
	URIs        []string
	IPs         []string
	Serial      string // lowercase hex of the serial number
	Fingerprint string // lowercase hex SHA-256 of the leaf's DER

	// SPIFFEID is the leaf's SPIFFE ID when it has exactly one URI SAN and
	// that is a well-formed SPIFFE ID (what an X.509-SVID carries), else "".
	SPIFFEID string

	// NameConstrained is set by PeerIdentity when a CA of a verified
	// chain carries name constraints, and ConstrainedSAN when, for every
	// such chain, the leaf also has a SAN of a kind its constraints govern
	// (DNS, IP, URI or email), which crypto/x509 then checked against them. Name
	// constraints never look at the subject's CN, so a CN-only leaf under
	// a constrained CA has ConstrainedSAN false. IdentityOf sets neither.
	NameConstrained bool
	ConstrainedSAN  bool
}

// oidCommonName is the attribute type of a subject common name.
var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// IdentityOf returns the identity of leaf. Values are copied as the
// certificate holds them, uncapped; Fields and String cap them.
func IdentityOf(leaf *x509.Certificate) Identity {
	sum := sha256.Sum256(leaf.Raw)
	var cns []string
	for _, a := range leaf.Subject.Names {
		if a.Type.Equal(oidCommonName) {
			v, _ := a.Value.(string)
			cns = append(cns, v)
		}
	}
	id := Identity{
		CommonName:  leaf.Subject.CommonName,
		CommonNames: cns,
		OrgUnits:    slices.Clone(leaf.Subject.OrganizationalUnit),
		DNSNames:    slices.Clone(leaf.DNSNames),
		Fingerprint: hex.EncodeToString(sum[:]),
	}
	if leaf.SerialNumber != nil {
		id.Serial = leaf.SerialNumber.Text(16)
	}
	for _, u := range leaf.URIs {
		id.URIs = append(id.URIs, u.String())
	}
	if sid, err := x509svid.IDFromCert(leaf); err == nil {
		id.SPIFFEID = sid.String()
	}
	for _, ip := range leaf.IPAddresses {
		id.IPs = append(id.IPs, ip.String())
	}
	return id
}

// SANs returns the subject alternative names as "dns:a,uri:spiffe://x,ip:1.2.3.4",
// uncapped.
func (id Identity) SANs() string {
	var b strings.Builder
	add := func(prefix string, vals []string) {
		for _, v := range vals {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(prefix)
			b.WriteString(v)
		}
	}
	add("dns:", id.DNSNames)
	add("uri:", id.URIs)
	add("ip:", id.IPs)
	return b.String()
}

// Fields returns the audit fields identity_cn, identity_sans (see SANs),
// identity_serial and identity_fingerprint; peer-supplied values are capped
// at 256 bytes.
func (id Identity) Fields() logrus.Fields {
	return logrus.Fields{
		audit.IdentityCN:          truncate(id.CommonName, maxFieldLen),
		audit.IdentitySANs:        truncate(id.SANs(), maxFieldLen),
		audit.IdentitySerial:      truncate(id.Serial, maxFieldLen),
		audit.IdentityFingerprint: id.Fingerprint,
	}
}

// String returns a short form for messages: cn="app1" serial=... sha256=<first 16 hex>.
func (id Identity) String() string {
	fp := id.Fingerprint
	if len(fp) > 16 {
		fp = fp[:16]
	}
	return fmt.Sprintf("cn=%q serial=%s sha256=%s",
		truncate(id.CommonName, 64), truncate(id.Serial, 64), fp)
}

// PeerIdentity returns the identity of the peer's leaf in a completed
// handshake: the leaf of the first verified chain, falling back to the first
// presented certificate, with NameConstrained and ConstrainedSAN from the
// verified chains. ok is false if the peer presented none.
func PeerIdentity(cs tls.ConnectionState) (Identity, bool) {
	leaf := peerLeaf(cs)
	if leaf == nil {
		return Identity{}, false
	}
	id := IdentityOf(leaf)
	backed := true // every constrained chain has a SAN of a kind it governs
	for _, chain := range cs.VerifiedChains {
		dns, ip, uri, email := false, false, false, false
		for _, ca := range chain[1:] {
			dns = dns || len(ca.PermittedDNSDomains) > 0 || len(ca.ExcludedDNSDomains) > 0
			ip = ip || len(ca.PermittedIPRanges) > 0 || len(ca.ExcludedIPRanges) > 0
			uri = uri || len(ca.PermittedURIDomains) > 0 || len(ca.ExcludedURIDomains) > 0
			email = email || len(ca.PermittedEmailAddresses) > 0 || len(ca.ExcludedEmailAddresses) > 0
		}
		if !dns && !ip && !uri && !email {
			continue
		}
		id.NameConstrained = true
		backed = backed && (dns && len(leaf.DNSNames) > 0 || ip && len(leaf.IPAddresses) > 0 ||
			uri && len(leaf.URIs) > 0 || email && len(leaf.EmailAddresses) > 0)
	}
	id.ConstrainedSAN = id.NameConstrained && backed
	return id, true
}

// truncate cuts s to at most n bytes on a rune boundary, marking a cut with "...".
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("...")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// SPIFFETrustDomain returns the trust domain of SPIFFEID ("example.org"),
// or "" if the identity has no SPIFFE ID.
func (id Identity) SPIFFETrustDomain() string {
	sid, err := spiffeid.FromString(id.SPIFFEID)
	if err != nil {
		return ""
	}
	return sid.TrustDomain().Name()
}

// CheckTrustDomain checks a SPIFFE trust domain name as SPIFFE defines it
// (lowercase letters, digits, ".", "-" and "_"; "spiffe://" in front is
// accepted) and returns it bare.
func CheckTrustDomain(s string) (string, error) {
	td, err := spiffeid.TrustDomainFromString(s)
	if err != nil {
		return "", fmt.Errorf("trust: trust domain %q: %w", truncate(s, 100), err)
	}
	return td.Name(), nil
}
