package trust

import (
	"cmp"
	"crypto/x509"
	"slices"
	"time"
)

// What the revocation checker shows of its sources while it runs (the admin
// status), and the CRL ages by issuer that the metrics export.

// Kinds of RevocationSource.
const (
	RevocationCRLFile = "crl_file" // a --crl file, re-read on reload and when it changes
	RevocationCRLURL  = "crl"      // a CRL Distribution Point, fetched and refreshed
	RevocationOCSPKey = "ocsp"     // one certificate's status at one OCSP responder
)

// RevocationSource is one source of revocation status.
type RevocationSource struct {
	Kind   string // RevocationCRLFile, RevocationCRLURL or RevocationOCSPKey
	Source string // the file, the Distribution Point URL or the responder URL
	Issuer string // the CA whose CRL it is, or the issuer of the certificate OCSP answers for
	Serial string // RevocationOCSPKey: the certificate's serial, lowercase hex
	// Usable: a verified CRL or OCSP response is held (for a CRL file:
	// always, its signature is checked where it is used).
	Usable     bool
	ThisUpdate time.Time // of what is held; zero when nothing is
	NextUpdate time.Time // zero when it names none
	// NextRefresh is when it is fetched next; zero for files, which are
	// re-read on reload and when they change.
	NextRefresh time.Time
	Failures    int    // fetches failed in a row
	Status      string // RevocationOCSPKey: good, revoked or unknown, when Usable
}

// Sources returns the checker's sources of revocation status: the CRL
// files of the current material, the Distribution Points it tracks and
// the OCSP responses it keeps, ordered by kind and source. Safe for
// concurrent use.
func (r *RevocationChecker) Sources() []RevocationSource {
	var out []RevocationSource
	if m := r.store.Material(); m != nil {
		for _, c := range m.CRLs {
			out = append(out, RevocationSource{Kind: RevocationCRLFile, Source: c.Source, Issuer: c.List.Issuer.String(), Usable: true,
				ThisUpdate: c.List.ThisUpdate, NextUpdate: c.List.NextUpdate})
		}
	}
	if r.crls != nil {
		out = append(out, r.crls.sources()...)
	}
	if r.ocsp != nil {
		out = append(out, r.ocsp.sources()...)
	}
	slices.SortFunc(out, func(a, b RevocationSource) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Source, b.Source), cmp.Compare(a.Serial, b.Serial))
	})
	return out
}

func (s *CRLStore) sources() []RevocationSource {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]RevocationSource, 0, len(s.entries))
	for _, e := range s.entries {
		st := RevocationSource{Kind: RevocationCRLURL, Source: e.url, NextRefresh: e.next, Failures: e.failures}
		if len(e.issuers) > 0 {
			st.Issuer = e.issuers[0].Subject.String()
		}
		if e.crl != nil {
			st.Usable, st.ThisUpdate, st.NextUpdate = true, e.crl.List.ThisUpdate, e.crl.List.NextUpdate
			st.Issuer = e.crl.List.Issuer.String()
		}
		out = append(out, st)
	}
	return out
}

func (s *OCSPStore) sources() []RevocationSource {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]RevocationSource, 0, len(s.entries))
	for _, e := range s.entries {
		st := RevocationSource{Kind: RevocationOCSPKey, Source: e.url, NextRefresh: e.next, Failures: e.failures}
		if e.cert != nil {
			st.Serial = e.cert.SerialNumber.Text(16)
		}
		if e.issuer != nil {
			st.Issuer = e.issuer.Subject.String()
		}
		if e.status != nil {
			st.Usable, st.ThisUpdate, st.NextUpdate = true, e.status.ThisUpdate, e.status.NextUpdate
			st.Status = ocspStatusName(e.status.Status)
		}
		out = append(out, st)
	}
	return out
}

// MaxIssuerSeries bounds CRLAgesByIssuer: the CRLs in use come from the CA
// bundle's CAs and the intermediates that chain to them, a set the
// operator's PKI bounds; past this many, the rest count as OtherIssuers.
const (
	MaxIssuerSeries = 64
	OtherIssuers    = "other"
)

// CRLAgesByIssuer returns, for each CA whose CRL is in use (from a file or
// a Distribution Point), how long ago the thisUpdate of its oldest such
// CRL was, keyed by the CA's subject: a label that the CA bundle bounds,
// unlike the URLs peer certificates name. Safe for concurrent use.
func (r *RevocationChecker) CRLAgesByIssuer() map[string]time.Duration {
	now := time.Now()
	var crls []*CRL
	if m := r.store.Material(); m != nil {
		crls = append(crls, m.CRLs...)
	}
	if r.crls != nil {
		for _, c := range r.crls.cachedCRLs() {
			crls = append(crls, c)
		}
	}
	out := map[string]time.Duration{}
	for _, c := range crls {
		key := issuerKey(c.List)
		if _, ok := out[key]; !ok && len(out) >= MaxIssuerSeries {
			key = OtherIssuers
		}
		if age, ok := out[key]; !ok || now.Sub(c.List.ThisUpdate) > age {
			out[key] = now.Sub(c.List.ThisUpdate)
		}
	}
	return out
}

// issuerKey names a CRL's issuer for a metric label.
func issuerKey(l *x509.RevocationList) string {
	if s := l.Issuer.String(); s != "" {
		return truncate(s, 200)
	}
	return "unnamed"
}
