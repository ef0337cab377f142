package trust_test

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/trust"
)

// crlOpts shape a test CRL.
type crlOpts struct {
	revoked    []*big.Int
	thisUpdate time.Time // default: an hour ago
	nextUpdate time.Time // default: in a day; set noNext to leave it out
	noNext     bool
	number     int64
	exts       []pkix.Extension
	entryExts  []pkix.Extension
}

// makeCRL returns a DER CRL signed by issuer.
func makeCRL(t *testing.T, issuer *testCert, o crlOpts) []byte {
	t.Helper()
	if o.thisUpdate.IsZero() {
		o.thisUpdate = time.Now().Add(-time.Hour)
	}
	if o.nextUpdate.IsZero() && !o.noNext {
		o.nextUpdate = time.Now().Add(24 * time.Hour)
	}
	if o.number == 0 {
		o.number = time.Now().UnixNano()
	}
	tmpl := &x509.RevocationList{
		Number:          big.NewInt(o.number),
		ThisUpdate:      o.thisUpdate,
		NextUpdate:      o.nextUpdate,
		ExtraExtensions: o.exts,
	}
	for _, s := range o.revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber: s, RevocationTime: time.Now().Add(-time.Minute), ExtraExtensions: o.entryExts,
		})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, issuer.cert, issuer.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func crlPEM(der ...[]byte) []byte {
	var out []byte
	for _, d := range der {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: d})...)
	}
	return out
}

func TestParseCRLs(t *testing.T) {
	ca := newCA(t, "CRL CA")
	a := makeCRL(t, ca, crlOpts{revoked: []*big.Int{big.NewInt(7)}})
	b := makeCRL(t, ca, crlOpts{})
	if cs, err := trust.ParseCRLs(a, "der"); err != nil || len(cs) != 1 {
		t.Fatalf("DER: %d CRLs, %v", len(cs), err)
	}
	cs, err := trust.ParseCRLs(append([]byte("comment\n"), crlPEM(a, b)...), "pem")
	if err != nil || len(cs) != 2 {
		t.Fatalf("PEM bundle: %d CRLs, %v", len(cs), err)
	}
	if _, ok := cs[0].Revoked(big.NewInt(7)); !ok {
		t.Error("serial 7 not found in the first CRL")
	}
	if _, ok := cs[1].Revoked(big.NewInt(7)); ok {
		t.Error("serial 7 found in the second CRL, which is empty")
	}
	if cs[0].Source != "pem" {
		t.Errorf("Source = %q", cs[0].Source)
	}
	critical := func(oid asn1.ObjectIdentifier) []pkix.Extension {
		return []pkix.Extension{{Id: oid, Critical: true, Value: []byte{0x30, 0}}}
	}
	bad := []struct {
		name string
		data []byte
		want string
	}{
		{"garbage", []byte("not a crl"), "not a PEM or DER CRL"},
		{"empty PEM", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}), "no PEM block"},
		{"bad PEM CRL", crlPEM([]byte{0x30, 1, 2}), "CRL 1"},
		{"issuing distribution point", makeCRL(t, ca, crlOpts{exts: critical(asn1.ObjectIdentifier{2, 5, 29, 28})}), "Issuing Distribution Point"},
		{"delta", makeCRL(t, ca, crlOpts{exts: critical(asn1.ObjectIdentifier{2, 5, 29, 27})}), "delta"},
		{"unknown critical", makeCRL(t, ca, crlOpts{exts: critical(asn1.ObjectIdentifier{1, 2, 3, 4})}), "unknown critical extension"},
		{"indirect entry", makeCRL(t, ca, crlOpts{revoked: []*big.Int{big.NewInt(1)},
			entryExts: critical(asn1.ObjectIdentifier{2, 5, 29, 29})}), "indirect"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := trust.ParseCRLs(tt.data, "x")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestCRLVerify(t *testing.T) {
	ca := newCA(t, "Real CA")
	impostor := newCA(t, "Real CA") // same name, other key
	other := newCA(t, "Other CA")
	parse := func(der []byte) *trust.CRL {
		cs, err := trust.ParseCRLs(der, "t")
		if err != nil {
			t.Fatal(err)
		}
		return cs[0]
	}
	good := parse(makeCRL(t, ca, crlOpts{}))
	if err := good.Verify(ca.cert); err != nil {
		t.Errorf("CRL of its own CA: %v", err)
	}
	if err := good.Verify(other.cert); err == nil {
		t.Error("CRL verified against a CA with another name")
	}
	forged := parse(makeCRL(t, impostor, crlOpts{}))
	if err := forged.Verify(ca.cert); err == nil {
		t.Error("CRL signed by an impostor with the same name verified")
	}
	// The cached verdict is the same on the second call.
	if err := forged.Verify(ca.cert); err == nil {
		t.Error("second Verify of the forged CRL passed")
	}
	noCRLSign := sign(t, &x509.Certificate{Subject: pkix.Name{CommonName: "No CRLSign"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, newECKey(t), nil)
	// x509.CreateRevocationList itself refuses an issuer without cRLSign,
	// so the CRL is made with another key of the same name and checked
	// against the certificate lacking the bit.
	if err := parse(makeCRL(t, newCA(t, "No CRLSign"), crlOpts{})).Verify(noCRLSign.cert); err == nil {
		t.Error("CRL verified against a CA without cRLSign")
	}
}

// FuzzParseCRLs: CRL bytes from a file or a Distribution Point never panic
// the parser, and whatever parses can be queried and verified.
func FuzzParseCRLs(f *testing.F) {
	ca := newCA(&testing.T{}, "Fuzz CA")
	der := makeCRL(&testing.T{}, ca, crlOpts{revoked: []*big.Int{big.NewInt(5)}})
	f.Add(der)
	f.Add(crlPEM(der, der))
	f.Add([]byte("-----BEGIN X509 CRL-----\nMAA=\n-----END X509 CRL-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cs, err := trust.ParseCRLs(data, "fuzz")
		if err != nil {
			return
		}
		for _, c := range cs {
			c.Revoked(big.NewInt(5))
			_ = c.Verify(ca.cert)
		}
	})
}
