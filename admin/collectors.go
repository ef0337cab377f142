package admin

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tunnel-dev/tunnel/client"
	"github.com/tunnel-dev/tunnel/netfilter"
	"github.com/tunnel-dev/tunnel/server"
	"github.com/tunnel-dev/tunnel/trust"
)

// The collectors read the packages' Stats() at scrape time (admin sits above
// the roles it reports on: they never import it), so the hot
// paths keep their plain atomic counters and nothing is counted twice.
// Metric names are stable; docs/METRICS.md lists them.

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("tunnel_"+name, help, labels, nil)
}

// collectorFunc adapts a describe list and a collect function.
type collectorFunc struct {
	descs   []*prometheus.Desc
	collect func(ch chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }

func counter(ch chan<- prometheus.Metric, d *prometheus.Desc, v uint64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func histogram(ch chan<- prometheus.Metric, d *prometheus.Desc, h server.Histogram) {
	buckets := make(map[float64]uint64, len(h.Bounds))
	var cum uint64
	for i, b := range h.Bounds {
		cum += h.Counts[i]
		buckets[b.Seconds()] = cum
	}
	ch <- prometheus.MustNewConstHistogram(d, h.Count, h.Sum.Seconds(), buckets)
}

// ReloadCollector exports reload results; counts returns applied and
// rejected reloads since start.
func ReloadCollector(counts func() (applied, rejected uint64)) prometheus.Collector {
	reloads := desc("reloads_total", "Reloads by result (applied, rejected).", "result")
	return collectorFunc{
		descs: []*prometheus.Desc{reloads},
		collect: func(ch chan<- prometheus.Metric) {
			a, r := counts()
			counter(ch, reloads, a, "applied")
			counter(ch, reloads, r, "rejected")
		},
	}
}

// ServerCollector exports a server's counters, its Filter's included.
func ServerCollector(s *server.Server) prometheus.Collector {
	var (
		rejected   = desc("connections_rejected_total", "Connections refused before a session began (conn_rejected), by reason.", "reason")
		pending    = desc("pending_connections", "Connections before their handshake, by stage (silent, client_hello).", "stage")
		inFlight   = desc("handshakes_in_flight", "TLS handshakes holding a slot now.")
		hsWaiting  = desc("handshakes_waiting", "TLS handshakes holding a slot and waiting for the peer's next flight now.")
		handshakes = desc("handshakes_total", "TLS handshakes by result (ok, failed, limit, evicted).", "result")
		sessions   = desc("sessions_active", "Client sessions open now.")
		streamsAct = desc("streams_active", "Streams open now.")
		streamsTot = desc("streams_total", "Streams accepted since start.")
		refused    = desc("streams_refused_total", "Streams answered with a non-zero status, by status.", "status")
		limits     = desc("limit_hits_total", "Limits hit, by limit.", "limit")
		hsTime     = desc("handshake_duration_seconds", "Complete ClientHello to finished TLS handshake, successful ones.")
		dialTime   = desc("backend_dial_duration_seconds", "One successful backend dial.")
		routeBytes = desc("route_bytes_total", "Bytes carried per route: in towards the backend, out back.", "route", "direction")
		routeStr   = desc("route_streams_total", "Streams that reached a route's backend.", "route")
		violations = desc("protocol_violations_total", "Sessions ended by the frame guard, by kind.", "kind")
		resumed    = desc("handshakes_resumed_total", "Successful TLS handshakes that resumed a session (counted in handshakes_total ok too).")
		memHeld    = desc("memory_held_bytes", "Stream data all sessions hold received and not yet taken by the backends, copy buffers included.")
		memBudget  = desc("memory_budget_bytes", "The bound on memory_held_bytes (--memory-budget).")
	)
	ex := exposeCollector()
	return collectorFunc{
		descs: append([]*prometheus.Desc{rejected, pending, inFlight, hsWaiting, handshakes, sessions, streamsAct, streamsTot, refused, limits, hsTime, dialTime, routeBytes, routeStr,
			violations, memHeld, memBudget, resumed}, ex.descs...),
		collect: func(ch chan<- prometheus.Metric) {
			st := s.Stats() // its Rejected holds the filter's reasons too, each from zero
			ex.collect(ch, st)
			for reason, n := range st.Rejected {
				counter(ch, rejected, n, reason)
			}
			for stage, n := range st.Pending {
				gauge(ch, pending, float64(n), stage)
			}
			gauge(ch, inFlight, float64(st.HandshakesInFlight))
			gauge(ch, hsWaiting, float64(st.HandshakesWaiting))
			for l, n := range st.LimitHits {
				counter(ch, limits, n, l)
			}
			counter(ch, limits, st.Rejected[netfilter.ReasonConnLimit], "conns_per_addr")
			histogram(ch, hsTime, st.HandshakeDuration)
			histogram(ch, dialTime, st.DialDuration)
			for _, r := range s.Routes() { // configured routes from zero, before their first stream
				if _, ok := st.Routes[r.Name]; !ok {
					st.Routes[r.Name] = server.RouteStats{}
				}
			}
			for route, rs := range st.Routes {
				counter(ch, routeBytes, rs.BytesIn, route, "in")
				counter(ch, routeBytes, rs.BytesOut, route, "out")
				counter(ch, routeStr, rs.Streams, route)
			}
			counter(ch, handshakes, st.HandshakesOK, "ok")
			counter(ch, resumed, st.HandshakesResumed)
			counter(ch, handshakes, st.HandshakesFailed, "failed")
			counter(ch, handshakes, st.HandshakeLimit, "limit")
			counter(ch, handshakes, st.HandshakesEvicted, "evicted")
			gauge(ch, sessions, float64(st.SessionsActive))
			gauge(ch, streamsAct, float64(st.StreamsActive))
			counter(ch, streamsTot, st.StreamsTotal)
			for status, n := range st.StreamsRefused {
				counter(ch, refused, n, status)
			}
			for kind, n := range st.Violations {
				counter(ch, violations, n, kind)
			}
			gauge(ch, memHeld, float64(st.MemoryHeld))
			gauge(ch, memBudget, float64(st.MemoryBudget))
		},
	}
}

// exposeMetrics are the server's metrics of its exposes, labelled by
// expose name (from the configuration, so bounded).
type exposeMetrics struct {
	descs                                                        []*prometheus.Desc
	publishers, conns, active, rejected, streams, bytes, refusal *prometheus.Desc
	publishRefused                                               *prometheus.Desc
}

func exposeCollector() exposeMetrics {
	m := exposeMetrics{
		publishers:     desc("expose_publishers", "Clients publishing the expose's name now (0: the expose is down).", "expose"),
		conns:          desc("expose_connections_total", "Inbound connections an expose's listener accepted past its allowlist and per-address cap.", "expose"),
		active:         desc("expose_connections_active", "Inbound connections of an expose being carried now.", "expose"),
		rejected:       desc("expose_connections_rejected_total", "Inbound connections of an expose reset, by reason (ip_not_allowed, conn_limit, no_publisher, publisher_limit, publisher_failed, expose_removed).", "expose", "reason"),
		streams:        desc("expose_streams_total", "Inbound connections of an expose carried to a publisher's target.", "expose"),
		bytes:          desc("expose_bytes_total", "Bytes carried for an expose: in towards the published target, out back.", "expose", "direction"),
		refusal:        desc("expose_publisher_refusals_total", "Publishers that refused an inbound connection (the next one was tried), by status.", "expose", "status"),
		publishRefused: desc("publish_refused_total", "Publications the server refused (publish_refused), any name."),
	}
	m.descs = []*prometheus.Desc{m.publishers, m.conns, m.active, m.rejected, m.streams, m.bytes, m.refusal, m.publishRefused}
	return m
}

func (m exposeMetrics) collect(ch chan<- prometheus.Metric, st server.Stats) {
	counter(ch, m.publishRefused, st.PublishRefused)
	for name, x := range st.Exposes {
		gauge(ch, m.publishers, float64(len(x.Publishers)), name)
		counter(ch, m.conns, x.Inbound, name)
		gauge(ch, m.active, float64(x.Active), name)
		for reason, n := range x.Rejected {
			counter(ch, m.rejected, n, name, reason)
		}
		counter(ch, m.streams, x.Streams, name)
		counter(ch, m.bytes, x.BytesIn, name, "in")
		counter(ch, m.bytes, x.BytesOut, name, "out")
		for status, n := range x.Refused {
			counter(ch, m.refusal, n, name, status)
		}
	}
}

// ClientCollector exports a client's counters.
func ClientCollector(c *client.Client) prometheus.Collector {
	var (
		up         = desc("client_session_up", "1 while the client holds a session to a server.")
		streamsAct = desc("client_streams_active", "Local connections carried now.")
		streamsTot = desc("client_streams_total", "Local connections accepted since start.")
		failed     = desc("client_streams_failed_total", "Local connections that got no stream or a refusal.")
		reconnects = desc("client_reconnects_total", "Sessions established after the first: each time the session to a server came back.")
		pubLive    = desc("client_publication_live", "1 while the server holds the publication live on the current session.", "expose")
		revTotal   = desc("client_reverse_streams_total", "The server's streams for a publication that reached its target.", "expose")
		revFailed  = desc("client_reverse_streams_failed_total", "The server's streams for a publication refused (target unreachable).", "expose")
		revActive  = desc("client_reverse_streams_active", "The server's streams for a publication open now.", "expose")
	)
	return collectorFunc{
		descs: []*prometheus.Desc{up, streamsAct, streamsTot, failed, reconnects, pubLive, revTotal, revFailed, revActive},
		collect: func(ch chan<- prometheus.Metric) {
			st := c.Stats()
			v := 0.0
			if st.SessionUp {
				v = 1
			}
			gauge(ch, up, v)
			gauge(ch, streamsAct, float64(st.StreamsActive))
			counter(ch, streamsTot, st.StreamsTotal)
			counter(ch, failed, st.StreamsFailed)
			counter(ch, reconnects, st.Reconnects)
			for name, p := range st.Publications {
				live := 0.0
				if p.Live {
					live = 1
				}
				gauge(ch, pubLive, live, name)
				counter(ch, revTotal, p.Streams, name)
				counter(ch, revFailed, p.Failed, name)
				gauge(ch, revActive, float64(p.Active), name)
			}
		},
	}
}

// RevocationCollector exports a revocation checker's counters.
func RevocationCollector(rc *trust.RevocationChecker) prometheus.Collector {
	var (
		checks  = desc("revocation_checks_total", "Peer chains checked for revocation.")
		revoked = desc("revocation_revoked_total", "Peer chains refused as revoked.")
		unavail = desc("crl_unavailable_total", "Certificates that needed a CRL when none was usable.")
		fetches = desc("crl_fetches_total", "CRL fetches by result (ok, failed).", "result")
		refused = desc("crl_urls_refused_total", "Distribution Point URLs refused before any request.")
		cached  = desc("crl_cached", "Distribution Points holding a verified CRL.")
		tracked = desc("crl_tracked", "Distribution Points being fetched or refreshed.")
		limits  = desc("crl_limit_hits_total", "CRL store caps hit, by cap.", "limit")
		age     = desc("crl_age_seconds", "Age of the oldest CRL in use of each issuing CA (by subject): now minus its thisUpdate.", "issuer")
		caRev   = desc("ca_revoked", "CA certificates of the bundle that a usable CRL lists as revoked.")
	)
	return collectorFunc{
		descs: []*prometheus.Desc{checks, revoked, unavail, fetches, refused, cached, tracked, limits, age, caRev},
		collect: func(ch chan<- prometheus.Metric) {
			st := rc.Stats()
			counter(ch, checks, st.Checked)
			counter(ch, revoked, st.Revoked)
			counter(ch, unavail, st.Unavailable)
			counter(ch, fetches, st.Store.FetchesOK, "ok")
			counter(ch, fetches, st.Store.FetchesFailed, "failed")
			counter(ch, refused, st.Store.URLsRefused)
			gauge(ch, cached, float64(st.Store.Cached))
			gauge(ch, tracked, float64(st.Store.Tracked))
			for _, l := range []string{trust.LimitFetchRate, trust.LimitCached, trust.LimitSeenURLs} {
				if _, ok := st.Store.LimitHits[l]; !ok { // every cap from zero
					counter(ch, limits, 0, l)
				}
			}
			for l, n := range st.Store.LimitHits {
				counter(ch, limits, n, l)
			}
			for issuer, a := range rc.CRLAgesByIssuer() { // not by URL: peers choose those
				gauge(ch, age, a.Seconds(), issuer)
			}
			gauge(ch, caRev, float64(st.CARevoked))
		},
	}
}
