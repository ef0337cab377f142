package trust

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/ocsp"

	"github.com/tunnel-dev/tunnel/internal/audit"
)

// OCSP store defaults. Responses are per certificate, so their cache is
// larger than the CRL cache; a response is a few hundred bytes to a few KiB,
// and the body cap keeps a hostile responder from making one large.
const (
	DefaultOCSPResponses = 8192     // responses cached at once (certificate x responder)
	DefaultOCSPMaxBytes  = 64 << 10 // one response's body cap (at most the fetcher's)
	// minOCSPRefresh is the shortest wait between two fetches of one
	// response: a response valid for less than MinCRLRefresh is refreshed
	// at 90 % of its validity, but never sooner than this.
	minOCSPRefresh = fetchRetryMin
)

// OCSPStoreConfig configures an OCSPStore.
type OCSPStoreConfig struct {
	Fetcher *CRLFetcher
	// RefreshInterval, if set, is how often each response is refetched
	// (never later than its nextUpdate). Otherwise each is refetched at
	// 90 % of its remaining validity, clamped to [MinCRLRefresh,
	// MaxCRLRefresh] and to before its nextUpdate.
	RefreshInterval time.Duration
	// Limits are the CRL store's caps, applied to responder URLs: new
	// responder URLs per minute (CA bundle certificates' excepted), responder
	// URLs remembered, and refused URLs remembered.
	Limits CRLStoreLimits
	// MaxResponses caps the responses cached (DefaultOCSPResponses); the
	// least recently used one that is not a CA bundle certificate's and has
	// no fetch in flight makes room for a new one.
	MaxResponses int
	// MaxBytes caps one response's body (DefaultOCSPMaxBytes).
	MaxBytes int64
	// GET sends requests by GET (RFC 5019, cacheable by HTTP caches) when
	// they are short enough, without a nonce. Otherwise (the default) they
	// go by POST with a nonce (RFC 6960, RFC 8954), which a responder that
	// supports nonces echoes, so an old response cannot be replayed.
	GET bool
	Log logrus.FieldLogger
	// OnUpdate, if set, runs after a fetch brought a response whose status
	// differs from the cached one (or a first one). It runs on a fetch
	// goroutine and must not block for long.
	OnUpdate func()
}

// OCSPStoreStats are an OCSPStore's counters since it started.
type OCSPStoreStats struct {
	FetchesOK     uint64
	FetchesFailed uint64 // network, HTTP, size, responder errors and responses that did not verify
	URLsRefused   uint64 // responder URLs refused before any request
	LimitHits     map[string]uint64
	Cached        int // responses cached (in date or not)
	Revoked       int // cached responses that say revoked
	// OldestAge is how long ago the thisUpdate of the oldest cached
	// response was (zero with none).
	OldestAge time.Duration
}

// OCSPStore fetches, verifies, caches and refreshes OCSP responses for the
// certificates handshakes present (and the CA bundle's intermediates), from
// the responders their Authority Information Access names. It uses the CRL
// fetcher (same URL checks, SSRF guard, timeout) and the CRL store's
// concurrency caps: at most maxConcurrentFetches at once, one per responder
// host at a time. On any failure the previous response stays while it is in
// date. Safe for concurrent use; Start it, Close it.
type OCSPStore struct {
	cfg  OCSPStoreConfig
	caps CRLStoreLimits
	log  logrus.FieldLogger

	mu         sync.Mutex
	entries    map[string]*ocspEntry // by ocspKey; at most cfg.MaxResponses
	responders *lru[string, bool]    // responder URLs seen; bounds the new-URL rate
	refusals   urlRefusals           // responder URLs never queried
	winStart   time.Time
	winCount   int
	closed     bool

	fetchOK, fetchFailed atomic.Uint64

	fetchSched // the loop, its caps and cap-hit counters
}

// ocspEntry is the state of one certificate at one responder.
type ocspEntry struct {
	key, url, host string
	cert, issuer   *x509.Certificate
	status         *OCSPStatus // the last verified response, or nil
	why            string      // why the last fetch gave nothing, a ReasonOCSP* or ReasonFetchFailed
	next           time.Time
	used           time.Time
	pinned         bool
	failures       int
	inflight       bool
	attempted      chan struct{} // closed when the first fetch ends, or at eviction
}

// NewOCSPStore returns a store; Start launches its refresher.
func NewOCSPStore(cfg OCSPStoreConfig) *OCSPStore {
	log := cfg.Log
	if log == nil {
		l := logrus.New()
		l.SetOutput(discard{})
		log = l
	}
	if cfg.MaxResponses <= 0 {
		cfg.MaxResponses = DefaultOCSPResponses
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultOCSPMaxBytes
	}
	caps := cfg.Limits.withDefaults()
	return &OCSPStore{cfg: cfg, caps: caps, log: log.WithField(audit.Component, "ocsp"),
		entries: map[string]*ocspEntry{}, responders: newLRU[string, bool](caps.TrackedURLs),
		refusals: newURLRefusals(caps.RefusedURLs), fetchSched: newFetchSched()}
}

// Start launches the goroutine that fetches and refreshes.
func (s *OCSPStore) Start() {
	s.wg.Add(1)
	go s.loop(s.startDue)
}

// Close stops the refresher, aborts fetches in flight and waits for them.
func (s *OCSPStore) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}

func ocspKey(url string, cert, issuer *x509.Certificate) string {
	h := sha256.Sum256(issuer.Raw)
	return url + "\x00" + string(h[:]) + string(cert.SerialNumber.Bytes())
}

// ocspVerdict is what the store knows of one certificate.
type ocspVerdict struct {
	needs   bool        // the certificate names an OCSP responder
	status  *OCSPStatus // an in-date verified response, or nil
	why     string      // with status nil: why there is none
	sources []string    // the responder URLs
	pending []string    // keys of entries whose first fetch has not ended
}

// lookup returns what the store has for cert, issued by issuer, at now.
// With register, responders it does not track yet are tracked (subject to
// the caps) and fetched in the background; pin marks a CA bundle
// certificate's. Without register it only reads (live-session re-checks).
func (s *OCSPStore) lookup(cert, issuer *x509.Certificate, register, pin bool, now time.Time) ocspVerdict {
	v := ocspVerdict{needs: len(cert.OCSPServer) > 0}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, raw := range cert.OCSPServer {
		v.sources = append(v.sources, raw)
		key := ocspKey(raw, cert, issuer)
		e, ok := s.entries[key]
		if !ok && register {
			var why string
			if e, why = s.trackLocked(raw, key, cert, issuer, pin, now); e == nil {
				if v.why == "" {
					v.why = why
				}
				continue
			}
		}
		if e == nil {
			continue
		}
		if register {
			e.used = now
			e.pinned = e.pinned || pin
		}
		if e.status != nil {
			why := e.status.usableAt(now)
			if why == "" {
				v.status = e.status
				return v
			}
			v.why = why
			if !e.inflight && e.next.After(now) && e.failures == 0 {
				e.next = now // expired in the cache: fetch now
				s.kick()
			}
			continue
		}
		select {
		case <-e.attempted:
			if e.why != "" && (v.why == "" || v.why == ReasonNotFetchedYet) {
				v.why = e.why
			}
		default:
			v.pending = append(v.pending, key)
			if v.why == "" {
				v.why = ReasonNotFetchedYet
			}
		}
	}
	if v.why == "" {
		v.why = ReasonNotFetchedYet
	}
	return v
}

// ocspURLs names responder URLs in the OCSP store's lines.
var ocspURLs = urlKind{
	event:      audit.OCSPUnavailable,
	refused:    "OCSP responder URL refused; it will not be queried",
	notFetched: "OCSP responder URL has a scheme that is not fetched",
	forgotten:  "refused OCSP responder forgotten to remember a new one",
}

// trackLocked adds an entry for cert at responder raw, or returns why not.
func (s *OCSPStore) trackLocked(raw, key string, cert, issuer *x509.Certificate, pin bool, now time.Time) (*ocspEntry, string) {
	if s.closed {
		return nil, ReasonFetchDisabled
	}
	if reason, ok := s.refusals.seen.get(raw); ok {
		return nil, reason
	}
	u, reason, err := s.cfg.Fetcher.precheck(raw) // no network; the verdict is the same each time
	if _, known := s.responders.get(raw); !known {
		if reason != "" {
			s.refusals.refuse(&s.fetchSched, s.log, ocspURLs, raw, reason, err)
			return nil, reason
		}
		if !pin {
			if now.Sub(s.winStart) >= time.Minute {
				s.winStart, s.winCount = now, 0
			}
			if s.winCount >= s.caps.NewURLsPerMinute {
				s.limitHit(s.log, LimitFetchRate, raw, "OCSP store limit reached; new responder dropped for now")
				return nil, reasonLimitPrefix + LimitFetchRate
			}
			s.winCount++
		}
		s.responders.add(raw, true)
	}
	if len(s.entries) >= s.cfg.MaxResponses && !s.evictLocked() {
		s.limitHit(s.log, LimitOCSPResponses, raw, "OCSP store full and nothing can be evicted; certificate not checked by OCSP for now")
		return nil, reasonLimitPrefix + LimitOCSPResponses
	}
	if reason != "" { // a known responder is one that passed
		return nil, reason
	}
	host := u.Host
	e := &ocspEntry{key: key, url: raw, host: host, cert: cert, issuer: issuer, next: now, used: now, pinned: pin,
		attempted: make(chan struct{})}
	s.entries[key] = e
	s.kick()
	return e, ""
}

// LimitOCSPResponses names the cap on cached OCSP responses in crl_limit
// lines and Stats.
const LimitOCSPResponses = "ocsp_responses"

// evictLocked drops the least recently used entry that is not pinned and
// has no fetch in flight, and reports whether it found one.
func (s *OCSPStore) evictLocked() bool {
	var victim *ocspEntry
	for _, e := range s.entries {
		if e.pinned || e.inflight {
			continue
		}
		if victim == nil || e.used.Before(victim.used) {
			victim = e
		}
	}
	if victim == nil {
		return false
	}
	s.dropLocked(victim)
	s.limitHit(s.log, LimitOCSPResponses, victim.url, "OCSP store full; least recently used response evicted")
	return true
}

func (s *OCSPStore) dropLocked(e *ocspEntry) {
	delete(s.entries, e.key)
	select {
	case <-e.attempted:
	default:
		close(e.attempted)
	}
}

// unpin clears the pin of every entry whose certificate is not among keep
// (the CA bundle after a reload).
func (s *OCSPStore) unpin(keep func(*x509.Certificate) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.entries {
		if e.pinned && !keep(e.cert) {
			e.pinned = false
		}
	}
}

// Wait blocks until each entry of keys has had a first fetch, or ctx ends.
func (s *OCSPStore) Wait(ctx context.Context, keys []string) error {
	for _, k := range keys {
		s.mu.Lock()
		e, ok := s.entries[k]
		s.mu.Unlock()
		if !ok {
			continue
		}
		select {
		case <-e.attempted:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// RefreshAll schedules every cached response for an immediate refetch.
func (s *OCSPStore) RefreshAll() {
	s.mu.Lock()
	now := time.Now()
	for _, e := range s.entries {
		e.next = now
	}
	s.mu.Unlock()
	s.kick()
}

// Stats returns the store's counters.
func (s *OCSPStore) Stats() OCSPStoreStats {
	st := OCSPStoreStats{FetchesOK: s.fetchOK.Load(), FetchesFailed: s.fetchFailed.Load(), URLsRefused: s.refusals.refused.Load(),
		LimitHits: s.limitCounts()}
	now := time.Now()
	s.mu.Lock()
	for _, e := range s.entries {
		if e.status == nil {
			continue
		}
		st.Cached++
		if e.status.Status == ocsp.Revoked {
			st.Revoked++
		}
		st.OldestAge = max(st.OldestAge, now.Sub(e.status.ThisUpdate))
	}
	s.mu.Unlock()
	return st
}

// startDue launches every due fetch it may, drops entries whose certificate
// has expired, and returns how long to sleep.
func (s *OCSPStore) startDue() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	wait := time.Hour
	for _, e := range s.entries {
		if e.inflight {
			continue
		}
		if d := e.next.Sub(now); d > 0 {
			wait = min(wait, d)
			continue
		}
		if now.After(e.cert.NotAfter) {
			s.dropLocked(e) // nobody can present it any more
			continue
		}
		if !s.mayStartLocked(e.host) {
			continue
		}
		e.inflight = true
		s.startedLocked(e.host)
		s.wg.Add(1)
		go s.fetch(e)
	}
	return wait
}

// fetch queries one responder for one certificate and records the outcome.
func (s *OCSPStore) fetch(e *ocspEntry) {
	defer s.wg.Done()
	s.mu.Lock()
	old := e.status
	s.mu.Unlock()

	st, err := s.fetchOne(e, old)
	now := time.Now()
	changed := false

	s.mu.Lock()
	e.inflight = false
	s.endedLocked(e.host)
	log := s.log.WithFields(logrus.Fields{audit.URL: truncate(e.url, 200), audit.Serial: serialText(e.cert.SerialNumber)})
	if err != nil {
		e.failures++
		e.why = ocspReason(err)
		e.next = now.Add(s.retryAfter(e.failures, old, now))
		s.fetchFailed.Add(1)
		if s.ctx.Err() == nil {
			log.WithFields(logrus.Fields{audit.Event: audit.OCSPFetchFailed, audit.Reason: e.why, audit.Error: truncate(err.Error(), 300),
				"retry_in": e.next.Sub(now).Round(time.Second).String(), "have_previous": old != nil}).
				Warn("OCSP fetch failed; keeping the previous response while it is in date")
		}
	} else {
		e.failures, e.why = 0, ""
		e.next = now.Add(s.refreshAfter(st, now))
		s.fetchOK.Add(1)
		changed = old == nil || old.Status != st.Status
		e.status = st
		fields := logrus.Fields{audit.Event: audit.OCSPRefreshed, "cert_status": ocspStatusName(st.Status),
			"this_update": st.ThisUpdate.UTC().Format(time.RFC3339), "next_fetch_in": e.next.Sub(now).Round(time.Second).String(),
			"changed": changed}
		if !st.NextUpdate.IsZero() {
			fields["next_update"] = st.NextUpdate.UTC().Format(time.RFC3339)
		}
		log.WithFields(fields).Info("OCSP response fetched")
	}
	select {
	case <-e.attempted:
	default:
		close(e.attempted)
	}
	s.mu.Unlock()
	s.kick()
	if changed && s.cfg.OnUpdate != nil {
		s.cfg.OnUpdate()
	}
}

// fetchOne sends one request and verifies the response; a response older
// than old is refused (a replay cannot un-revoke).
func (s *OCSPStore) fetchOne(e *ocspEntry, old *OCSPStatus) (*OCSPStatus, error) {
	var nonce []byte
	if !s.cfg.GET {
		nonce = newNonce()
	}
	req, err := newOCSPRequest(e.cert, e.issuer, nonce)
	if err != nil {
		return nil, ocspRefuse(ReasonOCSPBadResponse, "building the request: %v", err)
	}
	body, err := s.cfg.Fetcher.FetchOCSP(s.ctx, e.url, req, !s.cfg.GET, s.cfg.MaxBytes)
	if err != nil {
		return nil, err
	}
	st, err := verifyOCSP(body, e.cert, e.issuer, nonce, time.Now(), e.url)
	if err != nil {
		return nil, err
	}
	if old != nil && st.ThisUpdate.Before(old.ThisUpdate) {
		return nil, ocspRefuse(ReasonOCSPBadResponse, "thisUpdate %s is older than the cached response's %s (replay?)",
			st.ThisUpdate.UTC().Format(time.RFC3339), old.ThisUpdate.UTC().Format(time.RFC3339))
	}
	return st, nil
}

// refreshAfter is how long a fresh response is kept before refetching: as
// a CRL (90 % of the time to nextUpdate, clamped to [MinCRLRefresh,
// MaxCRLRefresh], or RefreshInterval), but always before its nextUpdate, so
// a response is renewed while in date, and never sooner than minOCSPRefresh.
func (s *OCSPStore) refreshAfter(st *OCSPStatus, now time.Time) time.Duration {
	return ocspRefreshAfter(st, now, s.cfg.RefreshInterval)
}

func ocspRefreshAfter(st *OCSPStatus, now time.Time, interval time.Duration) time.Duration {
	end := st.NextUpdate
	if end.IsZero() {
		end = st.ThisUpdate.Add(MinCRLRefresh)
	}
	left := end.Sub(now)
	d := interval
	if d <= 0 {
		d = min(max(left*9/10, MinCRLRefresh), MaxCRLRefresh)
	}
	if d >= left {
		d = left * 9 / 10
	}
	return max(d, minOCSPRefresh)
}

// retryAfter is the wait after n consecutive failures: 30 s doubling, never
// more than the refresh interval, and not past the end of a previous
// response that is still in date by much (it is worth a try before then).
func (s *OCSPStore) retryAfter(n int, old *OCSPStatus, now time.Time) time.Duration {
	ceiling := MaxCRLRefresh
	if s.cfg.RefreshInterval > 0 {
		ceiling = s.cfg.RefreshInterval
	}
	d := min(fetchRetryMin<<min(n-1, 16), ceiling)
	if old != nil && !old.NextUpdate.IsZero() {
		if left := old.NextUpdate.Sub(now) / 2; left > minOCSPRefresh {
			d = min(d, left)
		}
	}
	return d
}

// ocspReason classifies a fetch error.
func ocspReason(err error) string {
	var re *OCSPResponseError
	if errors.As(err, &re) {
		return re.Reason
	}
	return ReasonOCSPFailed
}

func ocspStatusName(s int) string {
	switch s {
	case ocsp.Good:
		return "good"
	case ocsp.Revoked:
		return "revoked"
	case ocsp.Unknown:
		return "unknown"
	}
	return fmt.Sprintf("status_%d", s)
}
