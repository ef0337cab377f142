package trust

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/logthrottle"
)

// Refresh bounds and the caps of CRLStore. A peer chooses which
// Distribution Points we see, so every table it can grow is capped; a cap
// hit is logged (rate-limited) and counted, and the URL is dropped.
const (
	MinCRLRefresh        = 10 * time.Minute // shortest refresh derived from nextUpdate
	MaxCRLRefresh        = 24 * time.Hour   // longest refresh derived from nextUpdate
	maxConcurrentFetches = 4
	maxNewURLsPerMinute  = 60
	maxTrackedHosts      = 1024
	maxSeenURLs          = 4096
	maxCachedCRLs        = 1024
	maxIssuersPerURL     = 4
	fetchRetryMin        = 30 * time.Second
	limitLogInterval     = time.Minute
)

// Names of the caps, as logged in crl_limit lines and counted in Stats.
const (
	LimitFetchRate = "new_urls_per_minute"
	LimitHosts     = "tracked_hosts"
	LimitSeenURLs  = "seen_urls"
	LimitCached    = "cached_crls"
)

// CRLStoreConfig configures a CRLStore.
type CRLStoreConfig struct {
	Fetcher *CRLFetcher
	// RefreshInterval, if set, is how often every CRL is refetched.
	// Otherwise each is refetched shortly before its nextUpdate, clamped to
	// [MinCRLRefresh, MaxCRLRefresh].
	RefreshInterval time.Duration
	Log             logrus.FieldLogger
	// OnUpdate, if set, runs after a fetch brought a CRL that differs from
	// the one cached for its URL (or the first one). It runs on the store's
	// goroutine and must not block for long.
	OnUpdate func(url string)
}

// CRLStoreStats are the store's counters since it started.
type CRLStoreStats struct {
	FetchesOK     uint64
	FetchesFailed uint64 // network, HTTP, size, parse or signature failures
	URLsRefused   uint64 // refused by CheckCRLURL (never fetched)
	LimitHits     map[string]uint64
	Cached        int // URLs holding a verified CRL
	Tracked       int // URLs being fetched or refreshed
}

// CRLStore caches CRLs fetched from Distribution Point URLs, keyed by URL.
// URLs are discovered (Discover) from the configured CAs at start-up and from
// each new chain a handshake presents; the store fetches them in the
// background, at most maxConcurrentFetches at once and one per host at a
// time, and refreshes them. A fetched CRL is kept only if it verifies against
// an issuer that discovered its URL and is not older than the one it
// replaces; on any failure the previous CRL stays. Safe for concurrent use.
type CRLStore struct {
	cfg CRLStoreConfig
	log logrus.FieldLogger

	mu       sync.Mutex
	entries  map[string]*crlEntry
	seen     map[string]struct{} // every URL ever considered, refused ones too
	hosts    map[string]int      // host -> number of tracked URLs
	busy     map[string]bool     // hosts with a fetch in flight
	active   int
	winStart time.Time // the new-URL rate window
	winCount int
	closed   bool

	wake   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	fetchOK, fetchFailed, refused atomic.Uint64
	limits                        sync.Map // limit name -> *atomic.Uint64
	limitLog                      *logthrottle.Throttle[string]
}

// crlEntry is the state of one URL.
type crlEntry struct {
	url, host string
	issuers   []*x509.Certificate // CAs whose certificates name this URL
	crl       *CRL                // the last verified CRL, or nil
	fetchedAt time.Time
	next      time.Time // when to fetch next
	failures  int       // consecutive failed fetches
	inflight  bool
	attempted chan struct{} // closed when the first fetch attempt ends
}

// NewCRLStore returns a store; Start launches its refresher.
func NewCRLStore(cfg CRLStoreConfig) *CRLStore {
	log := cfg.Log
	if log == nil {
		l := logrus.New()
		l.SetOutput(discard{})
		log = l
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &CRLStore{
		cfg: cfg, log: log.WithField(audit.Component, "crl"),
		entries: map[string]*crlEntry{}, seen: map[string]struct{}{},
		hosts: map[string]int{}, busy: map[string]bool{},
		limitLog: &logthrottle.Throttle[string]{Interval: limitLogInterval, Max: 16},
		wake:     make(chan struct{}, 1), ctx: ctx, cancel: cancel,
	}
}

// Start launches the goroutine that fetches and refreshes. Close stops it.
func (s *CRLStore) Start() {
	s.wg.Add(1)
	go s.run()
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

// Discover registers the http(s) Distribution Points of cert, issued by
// issuer, for fetching, and returns the URLs it tracks for cert (new and
// known ones; refused and capped ones are left out). It never blocks on the
// network.
func (s *CRLStore) Discover(cert, issuer *x509.Certificate) []string {
	var urls []string
	for _, raw := range cert.CRLDistributionPoints {
		if u := s.track(raw, issuer); u != "" {
			urls = append(urls, u)
		}
	}
	return urls
}

// track registers one URL and returns it, or "" if it is refused or a cap
// is hit.
func (s *CRLStore) track(raw string, issuer *x509.Certificate) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.entries[raw]; ok {
		e.addIssuer(issuer)
		return raw
	}
	if _, ok := s.seen[raw]; ok || s.closed {
		return "" // refused before, or capped by hosts/cache, or dropped
	}
	if isLDAPURL(raw) {
		return "" // legal in certificates and common in AD CS; we fetch only http(s)
	}
	if len(s.seen) >= maxSeenURLs {
		s.limitHitLocked(LimitSeenURLs, raw)
		return ""
	}
	now := time.Now()
	if now.Sub(s.winStart) >= time.Minute {
		s.winStart, s.winCount = now, 0
	}
	if s.winCount >= maxNewURLsPerMinute {
		s.limitHitLocked(LimitFetchRate, raw) // not marked seen: a later handshake may bring it again
		return ""
	}
	s.winCount++
	s.seen[raw] = struct{}{}
	u, err := CheckCRLURL(raw, s.cfg.Fetcher.opts.AllowHTTP)
	if err != nil {
		s.refused.Add(1)
		s.log.WithFields(logrus.Fields{audit.Event: audit.CRLUnavailable, audit.URL: truncate(raw, 200),
			audit.Reason: "url_refused", audit.Error: err.Error()}).Warn("CRL Distribution Point refused; it will not be fetched")
		return ""
	}
	host := u.Host
	if _, ok := s.hosts[host]; !ok && len(s.hosts) >= maxTrackedHosts {
		s.limitHitLocked(LimitHosts, raw)
		return ""
	}
	if len(s.entries) >= maxCachedCRLs {
		s.limitHitLocked(LimitCached, raw)
		return ""
	}
	s.hosts[host]++
	e := &crlEntry{url: raw, host: host, next: now, attempted: make(chan struct{})}
	e.addIssuer(issuer)
	s.entries[raw] = e
	s.kick()
	return raw
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

// limitHitLocked counts a cap hit and logs it at most once a minute per cap.
func (s *CRLStore) limitHitLocked(limit, raw string) {
	v, _ := s.limits.LoadOrStore(limit, new(atomic.Uint64))
	n := v.(*atomic.Uint64).Add(1)
	if _, _, ok := s.limitLog.Hit(limit); !ok {
		return
	}
	s.log.WithFields(logrus.Fields{audit.Event: audit.CRLLimit, audit.Limit: limit, audit.URL: truncate(raw, 200),
		audit.Count: n}).Warn("CRL store limit reached; Distribution Point dropped")
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
		URLsRefused: s.refused.Load(), LimitHits: map[string]uint64{}}
	s.limits.Range(func(k, v any) bool {
		st.LimitHits[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
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

func (s *CRLStore) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run starts due fetches within the concurrency caps and sleeps until the
// next one is due or something changes.
func (s *CRLStore) run() {
	defer s.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wait := s.startDue()
		timer.Reset(wait)
		select {
		case <-s.ctx.Done():
			return
		case <-s.wake:
		case <-timer.C:
		}
	}
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
		if s.active >= maxConcurrentFetches || s.busy[e.host] {
			continue // a finishing fetch kicks the loop
		}
		e.inflight = true
		s.busy[e.host] = true
		s.active++
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
	delete(s.busy, e.host)
	s.active--
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

func isLDAPURL(raw string) bool {
	u, err := url.Parse(raw)
	return err == nil && (u.Scheme == "ldap" || u.Scheme == "ldaps")
}

// discard is an io.Writer that drops everything, for a silent logger.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
