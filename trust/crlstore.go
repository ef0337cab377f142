package trust

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
)

// Refresh bounds and the caps of CRLStore. A peer chooses which
// Distribution Points we see, so every table it can grow is capped. No cap
// ever stops checking for good: the rate window moves on every minute, and
// the tables forget their least recently used URL to make room for a new
// one. A certificate whose Distribution Point a cap kept out counts as
// having no usable CRL for it (see RevocationChecker.Check).
const (
	MinCRLRefresh        = 10 * time.Minute // shortest refresh derived from nextUpdate
	MaxCRLRefresh        = 24 * time.Hour   // longest refresh derived from nextUpdate
	maxConcurrentFetches = 4
	maxIssuersPerURL     = 4
	fetchRetryMin        = 30 * time.Second
	limitLogInterval     = time.Minute
)

// Default CRL store caps; see CRLStoreLimits.
const (
	DefaultNewURLsPerMinute = 60
	DefaultTrackedURLs      = 1024
	DefaultRefusedURLs      = 4096
)

// Names of the caps, as logged in crl_limit lines and counted in Stats. A
// Distribution Point dropped by a cap gives the reason "limit_" + its name.
const (
	LimitFetchRate = "new_urls_per_minute" // new URLs tracked per minute
	LimitCached    = "cached_crls"         // URLs tracked (and CRLs cached) at once; the LRU one is evicted
	LimitSeenURLs  = "seen_urls"           // refused URLs remembered; the LRU one is forgotten
)

// Reasons a Distribution Point gives no usable CRL: the reason field of
// crl_unavailable lines and UnavailableError.Why.
const (
	ReasonSchemeNotFetched = "scheme_not_fetched" // ldap://, file://, ...; or http:// under --crl-allow-http=false
	ReasonURLRefused       = "url_refused"        // CheckCRLURL or the SSRF guard refused it before any request
	ReasonFetchDisabled    = "fetch_disabled"     // --crl-fetch=false and no --crl file for the issuer
	ReasonNotFetchedYet    = "not_fetched_yet"    // tracked; its first fetch has not ended
	ReasonFetchFailed      = "fetch_failed"       // tracked; fetches failed and no CRL was ever verified
	reasonLimitPrefix      = "limit_"             // + LimitFetchRate or LimitCached
)

// storeLimitDefaults are the caps used where CRLStoreLimits leaves a field
// zero. Only the tunnel_testhooks build changes them (testhooks.go), so the
// end-to-end tests can fill the caps in seconds.
var storeLimitDefaults = CRLStoreLimits{
	NewURLsPerMinute: DefaultNewURLsPerMinute,
	TrackedURLs:      DefaultTrackedURLs,
	RefusedURLs:      DefaultRefusedURLs,
}

// CRLStoreLimits are the caps of a CRLStore; a zero field takes its default.
type CRLStoreLimits struct {
	// NewURLsPerMinute caps how many URLs never seen before are tracked
	// per minute (DefaultNewURLsPerMinute). URLs of the CA bundle are not
	// counted. One over it is dropped for now; a later handshake brings
	// it again.
	NewURLsPerMinute int
	// TrackedURLs caps the URLs tracked, and so the CRLs cached, at once
	// (DefaultTrackedURLs). When it is reached, the least recently used
	// URL that is not a CA bundle's and has no fetch in flight is evicted.
	TrackedURLs int
	// RefusedURLs caps the refused URLs remembered, so that each is logged
	// once (DefaultRefusedURLs); the least recently used is forgotten.
	RefusedURLs int
}

func (l CRLStoreLimits) withDefaults() CRLStoreLimits {
	if l.NewURLsPerMinute <= 0 {
		l.NewURLsPerMinute = storeLimitDefaults.NewURLsPerMinute
	}
	if l.TrackedURLs <= 0 {
		l.TrackedURLs = storeLimitDefaults.TrackedURLs
	}
	if l.RefusedURLs <= 0 {
		l.RefusedURLs = storeLimitDefaults.RefusedURLs
	}
	return l
}

// CRLStoreConfig configures a CRLStore.
type CRLStoreConfig struct {
	Fetcher *CRLFetcher
	// RefreshInterval, if set, is how often every CRL is refetched.
	// Otherwise each is refetched shortly before its nextUpdate, clamped to
	// [MinCRLRefresh, MaxCRLRefresh].
	RefreshInterval time.Duration
	Limits          CRLStoreLimits
	Log             logrus.FieldLogger
	// Now is the clock of the new-URL rate window and of the LRU order;
	// nil means time.Now.
	Now func() time.Time
	// OnUpdate, if set, runs after a fetch brought a CRL that differs from
	// the one cached for its URL (or the first one). It runs on the store's
	// goroutine and must not block for long.
	OnUpdate func(url string)
}

// CRLStoreStats are the store's counters since it started.
type CRLStoreStats struct {
	FetchesOK     uint64
	FetchesFailed uint64 // network, HTTP, size, parse or signature failures
	URLsRefused   uint64 // refused by CheckCRLURL or the SSRF guard (never fetched)
	LimitHits     map[string]uint64
	Cached        int // URLs holding a verified CRL
	Tracked       int // URLs being fetched or refreshed
}

// UnusableDP is a Distribution Point of a certificate that gives no CRL,
// and why (one of the Reason* values, or "limit_" and a Limit* name).
type UnusableDP struct {
	URL    string
	Reason string
}

// CRLStore caches CRLs fetched from Distribution Point URLs, keyed by URL.
// URLs are discovered (Discover) from the configured CAs at start-up and from
// each new chain a handshake presents; the store fetches them in the
// background, at most maxConcurrentFetches at once and one per host at a
// time, and refreshes them. A fetched CRL is kept only if it verifies against
// an issuer that discovered its URL and is not older than the one it
// replaces; on any failure the previous CRL stays. Safe for concurrent use.
type CRLStore struct {
	cfg  CRLStoreConfig
	caps CRLStoreLimits // cfg.Limits with defaults
	log  logrus.FieldLogger

	mu       sync.Mutex
	entries  map[string]*crlEntry // tracked URLs; at most caps.TrackedURLs
	refusals urlRefusals          // Distribution Points never fetched
	hosts    map[string]int       // host -> number of tracked URLs
	winStart time.Time            // the new-URL rate window
	winCount int
	closed   bool

	fetchOK, fetchFailed atomic.Uint64

	fetchSched // the loop, its caps and cap-hit counters
}

// crlEntry is the state of one URL.
type crlEntry struct {
	url, host string
	issuers   []*x509.Certificate // CAs whose certificates name this URL
	crl       *CRL                // the last verified CRL, or nil
	fetchedAt time.Time
	next      time.Time // when to fetch next
	used      time.Time // when a certificate last named it; the LRU order
	pinned    bool      // named by a CA bundle certificate: never evicted
	failures  int       // consecutive failed fetches
	inflight  bool
	attempted chan struct{} // closed when the first fetch attempt ends, or the entry is evicted
}

// NewCRLStore returns a store; Start launches its refresher.
func NewCRLStore(cfg CRLStoreConfig) *CRLStore {
	log := cfg.Log
	if log == nil {
		l := logrus.New()
		l.SetOutput(discard{})
		log = l
	}
	caps := cfg.Limits.withDefaults()
	return &CRLStore{
		cfg: cfg, caps: caps, log: log.WithField(audit.Component, "crl"),
		entries: map[string]*crlEntry{}, refusals: newURLRefusals(caps.RefusedURLs),
		hosts: map[string]int{}, fetchSched: newFetchSched(),
	}
}

// Start launches the goroutine that fetches and refreshes. Close stops it.
func (s *CRLStore) Start() {
	s.wg.Add(1)
	go s.loop(s.startDue)
}

// Close stops the refresher, aborts fetches in flight and waits for them.
func (s *CRLStore) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.cfg.Fetcher.Close()
}

// Discover registers the Distribution Points of cert, issued by issuer, for
// fetching. It returns the URLs it tracks for cert (new and known ones) and
// those that give no CRL, with the reason: a scheme it does not fetch, a URL
// refused before any request, or a cap that kept a new URL out. It never
// blocks on the network.
func (s *CRLStore) Discover(cert, issuer *x509.Certificate) (urls []string, unusable []UnusableDP) {
	return s.discover(cert, issuer, false)
}

// discover is Discover; pin marks the URLs as a CA bundle certificate's:
// outside the new-URL rate and never evicted.
func (s *CRLStore) discover(cert, issuer *x509.Certificate, pin bool) (urls []string, unusable []UnusableDP) {
	for _, raw := range cert.CRLDistributionPoints {
		if u, reason := s.track(raw, issuer, pin); reason == "" {
			urls = append(urls, u)
		} else {
			unusable = append(unusable, UnusableDP{URL: raw, Reason: reason})
		}
	}
	return urls, unusable
}

// known returns the Distribution Points of cert that the store tracks now,
// without registering others or marking any used: for re-checking live
// sessions, which must not churn the store (a re-check after every CRL
// update that re-tracked evicted URLs would fetch, update and re-check
// again, round and round, whenever more URLs are in use than fit).
func (s *CRLStore) known(cert *x509.Certificate) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var urls []string
	for _, raw := range cert.CRLDistributionPoints {
		if _, ok := s.entries[raw]; ok {
			urls = append(urls, raw)
		}
	}
	return urls
}

// pinOnly makes urls the only pinned URLs: after a reload, the CAs that
// left the bundle no longer hold their URLs in the store.
func (s *CRLStore) pinOnly(urls []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keep := make(map[string]bool, len(urls))
	for _, u := range urls {
		keep[u] = true
	}
	for u, e := range s.entries {
		e.pinned = keep[u]
	}
}

// track registers one URL and returns it, or the reason it gives no CRL.
func (s *CRLStore) track(raw string, issuer *x509.Certificate, pin bool) (string, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.cfg.Now != nil {
		now = s.cfg.Now()
	}
	if e, ok := s.entries[raw]; ok {
		e.addIssuer(issuer)
		e.used = now
		e.pinned = e.pinned || pin
		return raw, ""
	}
	if s.closed {
		return "", ReasonFetchDisabled
	}
	if reason, ok := s.refusals.seen.get(raw); ok {
		return "", reason
	}
	u, reason, err := s.cfg.Fetcher.precheck(raw)
	if reason != "" {
		// A scheme we do not fetch is legal in certificates (ldap:// is
		// common in AD CS): the certificate needs a CRL from elsewhere.
		s.refusals.refuse(&s.fetchSched, s.log, crlURLs, raw, reason, err)
		return "", reason
	}
	if !pin {
		if now.Sub(s.winStart) >= time.Minute {
			s.winStart, s.winCount = now, 0
		}
		if s.winCount >= s.caps.NewURLsPerMinute {
			// Not remembered: a later handshake may bring it again.
			s.limitHit(s.log, LimitFetchRate, raw, "CRL store limit reached; Distribution Point dropped for now")
			return "", reasonLimitPrefix + LimitFetchRate
		}
		s.winCount++
	}
	if len(s.entries) >= s.caps.TrackedURLs && !s.evictLocked() {
		s.limitHit(s.log, LimitCached, raw, "CRL store limit reached and nothing can be evicted; Distribution Point dropped for now")
		return "", reasonLimitPrefix + LimitCached
	}
	host := u.Host
	s.hosts[host]++
	e := &crlEntry{url: raw, host: host, next: now, used: now, pinned: pin, attempted: make(chan struct{})}
	e.addIssuer(issuer)
	s.entries[raw] = e
	s.kick()
	return raw, ""
}

// evictLocked drops the least recently used entry that is not pinned and
// has no fetch in flight, and reports whether it found one.
func (s *CRLStore) evictLocked() bool {
	var victim *crlEntry
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
	delete(s.entries, victim.url)
	if s.hosts[victim.host]--; s.hosts[victim.host] <= 0 {
		delete(s.hosts, victim.host)
	}
	select {
	case <-victim.attempted:
	default:
		close(victim.attempted) // nobody waits for a fetch that will not happen
	}
	s.limitHit(s.log, LimitCached, victim.url, "CRL store full; least recently used Distribution Point evicted")
	return true
}

func (e *crlEntry) addIssuer(issuer *x509.Certificate) {
	if issuer == nil || len(e.issuers) >= maxIssuersPerURL {
		return
	}
	for _, i := range e.issuers {
		if i.Equal(issuer) {
			return
		}
	}
	e.issuers = append(e.issuers, issuer)
}

// CRL returns the verified CRL cached for url, or nil.
func (s *CRLStore) CRL(url string) *CRL {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.entries[url]; ok {
		return e.crl
	}
	return nil
}

// cachedCRLs returns the verified CRL of each URL that has one.
func (s *CRLStore) cachedCRLs() map[string]*CRL {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]*CRL, len(s.entries))
	for u, e := range s.entries {
		if e.crl != nil {
			out[u] = e.crl
		}
	}
	return out
}

// Attempted reports whether url has had at least one fetch attempt.
func (s *CRLStore) Attempted(url string) bool {
	s.mu.Lock()
	e, ok := s.entries[url]
	s.mu.Unlock()
	if !ok {
		return false
	}
	select {
	case <-e.attempted:
		return true
	default:
		return false
	}
}

// crlURLs names Distribution Points in the CRL store's lines.
var crlURLs = urlKind{
	event:      audit.CRLUnavailable,
	refused:    "CRL Distribution Point refused; it will not be fetched",
	notFetched: "CRL Distribution Point has a scheme that is not fetched",
	forgotten:  "refused Distribution Point forgotten to remember a new one",
}

// Wait blocks until every URL in urls has had a first fetch attempt, or
// ctx ends. URLs the store does not track are not waited for.
func (s *CRLStore) Wait(ctx context.Context, urls []string) error {
	for _, u := range urls {
		s.mu.Lock()
		e, ok := s.entries[u]
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

// RefreshAll schedules every tracked URL for an immediate refetch (SIGHUP,
// the admin endpoint).
func (s *CRLStore) RefreshAll() {
	s.mu.Lock()
	now := time.Now()
	for _, e := range s.entries {
		e.next = now
	}
	s.mu.Unlock()
	s.kick()
}

// Stats returns the store's counters.
func (s *CRLStore) Stats() CRLStoreStats {
	st := CRLStoreStats{FetchesOK: s.fetchOK.Load(), FetchesFailed: s.fetchFailed.Load(),
		URLsRefused: s.refusals.refused.Load(), LimitHits: s.limitCounts()}
	s.mu.Lock()
	st.Tracked = len(s.entries)
	for _, e := range s.entries {
		if e.crl != nil {
			st.Cached++
		}
	}
	s.mu.Unlock()
	return st
}

// startDue launches every due fetch it may and returns how long to sleep.
func (s *CRLStore) startDue() time.Duration {
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
		if !s.mayStartLocked(e.host) {
			continue // a finishing fetch kicks the loop
		}
		e.inflight = true
		s.startedLocked(e.host)
		s.wg.Add(1)
		go s.fetch(e)
	}
	return wait
}

// fetch downloads, parses and verifies one URL and records the outcome.
func (s *CRLStore) fetch(e *crlEntry) {
	defer s.wg.Done()
	s.mu.Lock()
	issuers := append([]*x509.Certificate(nil), e.issuers...)
	old := e.crl
	s.mu.Unlock()

	c, err := s.fetchOne(e.url, issuers, old)
	updated := false
	now := time.Now()

	s.mu.Lock()
	e.inflight = false
	s.endedLocked(e.host)
	log := s.log.WithField(audit.URL, truncate(e.url, 200))
	if err != nil {
		e.failures++
		e.next = now.Add(s.retryAfter(e.failures))
		s.fetchFailed.Add(1)
		if s.ctx.Err() == nil {
			log.WithFields(logrus.Fields{audit.Event: audit.CRLFetchFailed, audit.Error: err.Error(),
				"retry_in": e.next.Sub(now).Round(time.Second).String(), "have_previous": old != nil}).
				Warn("CRL fetch failed; keeping the previous CRL if any")
		}
	} else {
		e.failures = 0
		e.fetchedAt = now
		e.next = now.Add(s.refreshAfter(c, now))
		s.fetchOK.Add(1)
		updated = old == nil || !bytes.Equal(old.List.Raw, c.List.Raw)
		e.crl = c
		fields := logrus.Fields{audit.Event: audit.CRLRefreshed, "entries": len(c.List.RevokedCertificateEntries),
			"this_update": c.List.ThisUpdate.UTC().Format(time.RFC3339), "next_fetch_in": e.next.Sub(now).Round(time.Second).String(),
			"changed": updated}
		if !c.List.NextUpdate.IsZero() {
			fields["next_update"] = c.List.NextUpdate.UTC().Format(time.RFC3339)
		}
		if c.List.Number != nil {
			fields["crl_number"] = c.List.Number.String()
		}
		log.WithFields(fields).Info("CRL fetched")
	}
	select {
	case <-e.attempted:
	default:
		close(e.attempted)
	}
	s.mu.Unlock()
	s.kick()
	if updated && s.cfg.OnUpdate != nil {
		s.cfg.OnUpdate(e.url)
	}
}

// fetchOne fetches url and returns its CRL if it parses, verifies against
// one of issuers, and is not older than old.
func (s *CRLStore) fetchOne(url string, issuers []*x509.Certificate, old *CRL) (*CRL, error) {
	body, err := s.cfg.Fetcher.Fetch(s.ctx, url)
	if err != nil {
		return nil, err
	}
	crls, err := ParseCRLs(body, url)
	if err != nil {
		return nil, err
	}
	if len(crls) != 1 {
		return nil, fmt.Errorf("served %d CRLs; a Distribution Point serves one", len(crls))
	}
	c := crls[0]
	var verr error = errors.New("no known issuer for this Distribution Point")
	for _, is := range issuers {
		if verr = c.Verify(is); verr == nil {
			break
		}
	}
	if verr != nil {
		return nil, fmt.Errorf("CRL ignored: %w", verr)
	}
	if old != nil && c.List.ThisUpdate.Before(old.List.ThisUpdate) {
		return nil, fmt.Errorf("CRL ignored: thisUpdate %s is older than the cached CRL's %s (replay?)",
			c.List.ThisUpdate.UTC().Format(time.RFC3339), old.List.ThisUpdate.UTC().Format(time.RFC3339))
	}
	return c, nil
}

// refreshAfter is how long a freshly fetched CRL is kept before refetching.
func (s *CRLStore) refreshAfter(c *CRL, now time.Time) time.Duration {
	if s.cfg.RefreshInterval > 0 {
		return s.cfg.RefreshInterval
	}
	if c.List.NextUpdate.IsZero() {
		return MaxCRLRefresh
	}
	// Refetch a little before nextUpdate so the CRL in use never expires
	// while the CA publishes on time.
	d := c.List.NextUpdate.Sub(now) * 9 / 10
	return min(max(d, MinCRLRefresh), MaxCRLRefresh)
}

// retryAfter is the wait after n consecutive failures: 30 s doubling, never
// more than the refresh interval.
func (s *CRLStore) retryAfter(n int) time.Duration {
	ceiling := MaxCRLRefresh
	if s.cfg.RefreshInterval > 0 {
		ceiling = s.cfg.RefreshInterval
	}
	d := fetchRetryMin << min(n-1, 16)
	return min(d, ceiling)
}

// discard is an io.Writer that drops everything, for a silent logger.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
