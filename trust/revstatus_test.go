package trust

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"testing"
	"time"
)

// CRLAgesByIssuer keys ages by the issuing CA's subject, keeps the oldest
// CRL of an issuer, and folds issuers past MaxIssuerSeries into
// OtherIssuers, so the metric's series stay bounded whatever URLs peers
// name. Sources lists the CRL files with their issuer and dates.
func TestCRLAgesByIssuer(t *testing.T) {
	now := time.Now()
	crl := func(cn string, age time.Duration) *CRL {
		return &CRL{Source: "/etc/tunnel/" + cn + ".crl", List: &x509.RevocationList{
			Issuer: pkix.Name{CommonName: cn}, ThisUpdate: now.Add(-age), NextUpdate: now.Add(time.Hour)}}
	}
	m := &Material{CRLs: []*CRL{crl("Issuing CA 1", time.Hour), crl("Issuing CA 1", 3*time.Hour), crl("Issuing CA 2", time.Minute)}}
	for i := range MaxIssuerSeries + 5 {
		m.CRLs = append(m.CRLs, crl(fmt.Sprintf("CA %03d", i), time.Duration(i)*time.Second))
	}
	rc := NewRevocationChecker(RevocationPolicy{}, NewStore(m), nil)
	defer rc.Close()
	ages := rc.CRLAgesByIssuer()
	if len(ages) != MaxIssuerSeries+1 {
		t.Errorf("%d series, want %d (the cap and %q)", len(ages), MaxIssuerSeries+1, OtherIssuers)
	}
	if a := ages["CN=Issuing CA 1"]; a < 3*time.Hour || a > 3*time.Hour+time.Minute {
		t.Errorf("Issuing CA 1: %v, want its oldest CRL's age, 3h", a)
	}
	if _, ok := ages[OtherIssuers]; !ok {
		t.Errorf("no %q series past the cap", OtherIssuers)
	}
	srcs := rc.Sources()
	if len(srcs) != len(m.CRLs) || srcs[0].Kind != RevocationCRLFile || srcs[0].Issuer == "" || !srcs[0].Usable || srcs[0].ThisUpdate.IsZero() {
		t.Errorf("Sources() = %d, first %+v", len(srcs), srcs[0])
	}
}
