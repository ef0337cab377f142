package admin

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tunnel-dev/tunnel/trust"
)

// IdentityCollector exports the health of the role's identity source (the
// files, or the SPIFFE Workload API), labelled by its kind only
// (trust.SourceFile, trust.SourceSPIFFE), so the series stay few. closed
// returns how many live sessions the source's updates closed (a bundle
// that dropped their CA).
func IdentityCollector(src trust.Source, closed func() uint64) prometheus.Collector {
	var (
		up       = desc("identity_source_up", "1 while the identity source is current (state ok); 0 while stale (the last update failed, the last material serves) or expired.", "kind")
		state    = desc("identity_source_state", "1 for the identity source's state now (ok, stale, expired), 0 for the others.", "kind", "state")
		updates  = desc("identity_updates_total", "Material the identity source took in: the first load, reloads, SVID rotations and bundle changes.", "kind")
		failures = desc("identity_source_failures_total", "Failed updates of the identity source (a refused reload of the files, a Workload API error).", "kind")
		age      = desc("identity_age_seconds", "Time since the identity source's material in use was taken in.", "kind")
		expiry   = desc("identity_expiry_seconds", "Time until the certificate in use expires (negative once it has).", "kind")
		revoked  = desc("identity_sessions_closed_total", "Live sessions closed because an update of the identity source's trust bundle dropped their CA.", "kind")
	)
	return collectorFunc{
		descs: []*prometheus.Desc{up, state, updates, failures, age, expiry, revoked},
		collect: func(ch chan<- prometheus.Metric) {
			st := src.Status()
			kind := src.Kind()
			gauge(ch, up, boolValue(st.State == trust.StateOK), kind)
			for _, s := range []string{trust.StateOK, trust.StateStale, trust.StateExpired} {
				gauge(ch, state, boolValue(st.State == s), kind, s)
			}
			counter(ch, updates, st.Updates, kind)
			counter(ch, failures, st.Failures, kind)
			gauge(ch, age, st.Age.Seconds(), kind)
			if !st.NotAfter.IsZero() {
				gauge(ch, expiry, time.Until(st.NotAfter).Seconds(), kind)
			}
			if closed != nil {
				counter(ch, revoked, closed(), kind)
			}
		},
	}
}

// OCSPCollector exports the OCSP counters of a revocation checker (all zero
// unless its method uses OCSP).
func OCSPCollector(rc *trust.RevocationChecker) prometheus.Collector {
	var (
		fetches = desc("ocsp_fetches_total", "OCSP requests by result (ok, failed: network, HTTP, size or responder errors, and responses that did not verify).", "result")
		refused = desc("ocsp_urls_refused_total", "OCSP responder URLs refused before any request (URL checks and the SSRF guard).")
		limits  = desc("ocsp_limit_hits_total", "OCSP cache caps hit, by cap.", "limit")
		cached  = desc("ocsp_cached", "OCSP responses cached (in date or not).")
		revoked = desc("ocsp_revoked", "Cached OCSP responses that say revoked.")
		oldest  = desc("ocsp_oldest_age_seconds", "Age of the oldest cached OCSP response: now minus its thisUpdate.")
	)
	return collectorFunc{
		descs: []*prometheus.Desc{fetches, refused, limits, cached, revoked, oldest},
		collect: func(ch chan<- prometheus.Metric) {
			st := rc.Stats().OCSP
			counter(ch, fetches, st.FetchesOK, "ok")
			counter(ch, fetches, st.FetchesFailed, "failed")
			counter(ch, refused, st.URLsRefused)
			for l, n := range st.LimitHits {
				counter(ch, limits, n, l)
			}
			gauge(ch, cached, float64(st.Cached))
			gauge(ch, revoked, float64(st.Revoked))
			gauge(ch, oldest, st.OldestAge.Seconds())
		},
	}
}

// StapleCollector exports the state of the server's own OCSP staple.
func StapleCollector(st *trust.Stapler) prometheus.Collector {
	var (
		have     = desc("ocsp_staple_up", "1 while a good, in-date OCSP response for the server's current certificate is stapled.")
		renewals = desc("ocsp_staple_renewals_total", "OCSP staples fetched (or read from the staple file) and verified.")
		failures = desc("ocsp_staple_failures_total", "Staple renewals that failed (the previous staple stays while in date).")
		next     = desc("ocsp_staple_next_update_seconds", "Time until the stapled response's nextUpdate (absent without a staple).")
	)
	return collectorFunc{
		descs: []*prometheus.Desc{have, renewals, failures, next},
		collect: func(ch chan<- prometheus.Metric) {
			s := st.Status()
			gauge(ch, have, boolValue(s.Have))
			counter(ch, renewals, s.Renewals)
			counter(ch, failures, s.Failures)
			if s.Have && !s.NextUpdate.IsZero() {
				gauge(ch, next, time.Until(s.NextUpdate).Seconds())
			}
		},
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
