package admin

import (
	"crypto/x509"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tunnel-dev/tunnel/trust"
)

// Collectors of what an operator checks besides traffic: which build runs,
// when its certificates expire, when it last reloaded.

// BuildInfoCollector exports tunnel_build_info, always 1, with the build's
// version, Go version and commit as labels.
func BuildInfoCollector(version, goVersion, commit string) prometheus.Collector {
	info := desc("build_info", "The running build: always 1, with its version, Go version and commit as labels.", "version", "goversion", "commit")
	return collectorFunc{
		descs:   []*prometheus.Desc{info},
		collect: func(ch chan<- prometheus.Metric) { gauge(ch, info, 1, version, goVersion, commit) },
	}
}

// Kinds of certificate in tunnel_certificate_not_after_timestamp_seconds.
const (
	CertLeaf  = "leaf"  // the process's own certificate
	CertChain = "chain" // an intermediate sent with it
	CertCA    = "ca"    // a certificate of the CA bundle (--ca)
)

// CertificateCollector exports the notAfter of each certificate of the
// material current at scrape time: the own leaf, the chain sent with it
// and the CA bundle, labelled by role, kind, subject and serial (as many
// series as certificates loaded, which the operator's files bound).
func CertificateCollector(role string, material func() *trust.Material) prometheus.Collector {
	notAfter := desc("certificate_not_after_timestamp_seconds", "NotAfter of each loaded certificate (own leaf, its chain, the CA bundle), as a Unix time.",
		"role", "kind", "subject", "serial")
	return collectorFunc{
		descs: []*prometheus.Desc{notAfter},
		collect: func(ch chan<- prometheus.Metric) {
			for _, c := range Certificates(material()) {
				gauge(ch, notAfter, float64(c.NotAfter.Unix()), role, c.Kind, c.Subject, c.Serial)
			}
		},
	}
}

// Certificates lists m's certificates as the status and the metrics show
// them, expiry counted from now; nil material has none.
func Certificates(m *trust.Material) []Certificate {
	if m == nil {
		return nil
	}
	now := time.Now()
	var out []Certificate
	add := func(kind string, c *x509.Certificate) {
		out = append(out, Certificate{Kind: kind, Subject: truncate(c.Subject.String(), 200), Serial: c.SerialNumber.Text(16),
			NotAfter: c.NotAfter.UTC(), ExpiresInSeconds: c.NotAfter.Sub(now).Round(time.Second).Seconds()})
	}
	if leaf := m.Certificate.Leaf; leaf != nil {
		add(CertLeaf, leaf)
	}
	for _, der := range m.Certificate.Certificate[min(1, len(m.Certificate.Certificate)):] {
		if c, err := x509.ParseCertificate(der); err == nil {
			add(CertChain, c)
		}
	}
	for _, c := range m.CACerts {
		add(CertCA, c)
	}
	return out
}

// LastReloadCollector exports tunnel_last_reload_timestamp_seconds for
// each result, applied and rejected, as a Unix time, or 0 before the
// first of its kind; last returns those times (zero: none yet).
func LastReloadCollector(last func() (applied, rejected time.Time)) prometheus.Collector {
	ts := desc("last_reload_timestamp_seconds", "When the last reload of each result (applied, rejected) ended, as a Unix time; 0 before the first.", "result")
	unix := func(t time.Time) float64 {
		if t.IsZero() {
			return 0
		}
		return float64(t.UnixNano()) / 1e9
	}
	return collectorFunc{
		descs: []*prometheus.Desc{ts},
		collect: func(ch chan<- prometheus.Metric) {
			a, r := last()
			gauge(ch, ts, unix(a), "applied")
			gauge(ch, ts, unix(r), "rejected")
		},
	}
}
