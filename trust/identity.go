package trust

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
)

// maxFieldLen caps each identity value that comes from a peer, in bytes.
const maxFieldLen = 256

// Identity is what logs, authorization and metrics see of a verified peer:
// names and fingerprints, never certificate contents. It is a plain value.
type Identity struct {
	CommonName  string
	OrgUnits    []string
	DNSNames    []string
	URIs        []string
	IPs         []string
	Serial      string // lowercase hex of the serial number
	Fingerprint string // lowercase hex SHA-256 of the leaf's DER
}

// IdentityOf returns the identity of leaf. Values are copied as the
// certificate holds them, uncapped; Fields and String cap them.
func IdentityOf(leaf *x509.Certificate) Identity {
	sum := sha256.Sum256(leaf.Raw)
	id := Identity{
		CommonName:  leaf.Subject.CommonName,
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
// presented certificate. ok is false if the peer presented none.
func PeerIdentity(cs tls.ConnectionState) (Identity, bool) {
	leaf := peerLeaf(cs)
	if leaf == nil {
		return Identity{}, false
	}
	return IdentityOf(leaf), true
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
