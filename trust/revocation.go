package trust

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/ocsp"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/logthrottle"
)

// Defaults of the --crl-* flags.
const (
	DefaultCRLStaleGrace       = 24 * time.Hour
	DefaultCRLBootstrapTimeout = 10 * time.Second
	// denyWait is how long a handshake waits, in fail-closed mode, for the
	// first fetch of a Distribution Point it just brought to light. It is
	// well inside the default 10 s handshake deadline.
	denyWait = 5 * time.Second
	// warnInterval spaces the crl_unavailable and crl_rejected warnings of
	// one source.
	warnInterval = time.Minute
	maxWarnKeys  = 4096
)

// Reasons for FailureReason and session_revoked lines.
const (
	ReasonRevoked         = "revoked"
	ReasonCRLUnavailable  = "crl_unavailable"
	ReasonOCSPUnavailable = "ocsp_unavailable"
)

// Revocation methods: where RevocationPolicy.Method takes revocation status
// from. The zero value is RevocationCRL.
const (
	// RevocationCRL: CRLs only (files and Distribution Points), as before
	// OCSP existed.
	RevocationCRL = "crl"
	// RevocationOCSP: OCSP only, for each certificate whose Authority
	// Information Access names a responder; CRLs are not looked at.
	RevocationOCSP = "ocsp"
	// RevocationBoth: both; revoked if either says so, and each that a
	// certificate needs must be usable.
	RevocationBoth = "both"
	// RevocationPreferOCSP: OCSP where the certificate names a responder
	// and it answers good or revoked; CRLs otherwise (no responder, or no
	// usable answer from it).
	RevocationPreferOCSP = "prefer-ocsp"
)

// ParseRevocationMethod checks a --revocation value: crl, ocsp, both or
// prefer-ocsp ("" is crl).
func ParseRevocationMethod(s string) (string, error) {
	switch s {
	case "":
		return RevocationCRL, nil
	case RevocationCRL, RevocationOCSP, RevocationBoth, RevocationPreferOCSP:
		return s, nil
	}
	return "", fmt.Errorf("trust: revocation method %q: want crl, ocsp, both or prefer-ocsp", truncate(s, 40))
}

// RevocationPolicy says how certificates are checked for revocation. The
// zero value checks nothing; start from DefaultRevocationPolicy.
type RevocationPolicy struct {
	Disabled          bool          // no revocation checking at all
	Fetch             bool          // fetch CRLs from Distribution Points (files are always used)
	EndEntityOnly     bool          // check only the leaf, not the intermediates
	DenyOnUnavailable bool          // fail closed: refuse a certificate whose CRL is unavailable
	EnforceExpiration bool          // an expired CRL is used only within StaleGrace
	StaleGrace        time.Duration // how long past nextUpdate a CRL is still used
	RefreshInterval   time.Duration // 0: derived from each CRL's nextUpdate
	BootstrapTimeout  time.Duration // start-up wait for the CA chain's CRLs, all together
	FetchOptions      FetchOptions

	// Method is where status comes from: RevocationCRL (""), RevocationOCSP,
	// RevocationBoth or RevocationPreferOCSP. The other fields apply to
	// OCSP as to CRLs: DenyOnUnavailable, EndEntityOnly, RefreshInterval,
	// BootstrapTimeout (the CA bundle's responders), FetchOptions (the
	// same fetcher, guard and caps). An OCSP response is never used past
	// its nextUpdate (StaleGrace is for CRLs).
	Method string
	// OCSPGET sends OCSP requests by GET without a nonce (RFC 5019) when
	// short enough; the default is POST with a nonce.
	OCSPGET bool
	// OCSPMaxResponses caps the OCSP responses cached
	// (DefaultOCSPResponses when zero).
	OCSPMaxResponses int
}

func (p RevocationPolicy) useOCSP() bool {
	return !p.Disabled && (p.Method == RevocationOCSP || p.Method == RevocationBoth || p.Method == RevocationPreferOCSP)
}

func (p RevocationPolicy) useCRL() bool { return p.Method != RevocationOCSP }

// DefaultRevocationPolicy is revocation on, fetching on, full chain,
// fail-open, expiration enforced with a 24 h grace.
func DefaultRevocationPolicy() RevocationPolicy {
	return RevocationPolicy{
		Fetch:             true,
		EnforceExpiration: true,
		StaleGrace:        DefaultCRLStaleGrace,
		BootstrapTimeout:  DefaultCRLBootstrapTimeout,
		FetchOptions:      DefaultFetchOptions(),
	}
}

// RevokedError is the error of a chain with a revoked certificate.
type RevokedError struct {
	Serial    string // lowercase hex
	Subject   string
	Depth     int    // 0 for the leaf, 1 for its issuer, ...
	Source    string // the CRL's file or URL, or the OCSP responder's URL
	RevokedAt time.Time
	Via       string // "CRL" ("" reads so too) or "OCSP"
}

// viaOCSP is RevokedError.Via of an OCSP answer.
const viaOCSP = "OCSP"

func (e *RevokedError) Error() string {
	what := "certificate"
	if e.Depth > 0 {
		what = "intermediate CA certificate"
	}
	by := "CRL " + truncate(e.Source, 200)
	if e.Via == viaOCSP {
		by = "OCSP (" + truncate(e.Source, 200) + ")"
	}
	return fmt.Sprintf("trust: %s serial %s (%s) is revoked since %s by %s",
		what, e.Serial, truncate(e.Subject, 100), e.RevokedAt.UTC().Format(time.RFC3339), by)
}

// UnavailableError is the error of a chain whose revocation status cannot be
// known in fail-closed mode.
type UnavailableError struct {
	Serial  string
	Subject string
	Sources []string // the Distribution Points, files or OCSP responders that were not usable
	Why     string
	OCSP    bool // the missing status is an OCSP response's, not a CRL's
}

func (e *UnavailableError) Error() string {
	what := "CRL"
	if e.OCSP {
		what = "OCSP response"
	}
	return fmt.Sprintf("trust: no usable %s for certificate serial %s (%s): %s (%s)",
		what, e.Serial, truncate(e.Subject, 100), e.Why, truncate(strings.Join(e.Sources, ", "), 300))
}

// RevocationStats are counters of a RevocationChecker.
type RevocationStats struct {
	Checked     uint64 // chains checked
	Revoked     uint64 // chains refused as revoked
	Unavailable uint64 // certificates with no usable CRL (allowed or refused by policy)
	Store       CRLStoreStats
	// CRLAges is, for each CRL in use (file path or URL), how long ago
	// its thisUpdate was.
	CRLAges map[string]time.Duration
	// CARevoked is how many CA certificates of the bundle a usable CRL
	// lists as revoked, as of the last look (start-up, reload, CRL change).
	CARevoked int
	// OCSP are the OCSP store's counters (zero unless the method uses OCSP).
	OCSP OCSPStoreStats
}

// RevocationChecker checks certificate chains against CRLs: those loaded from
// files with the current Material of a Store, and those fetched from
// Distribution Points by its CRLStore. It is safe for concurrent use.
type RevocationChecker struct {
	policy RevocationPolicy
	store  *Store
	crls   *CRLStore  // nil when fetching is off or the method is OCSP only
	ocsp   *OCSPStore // nil unless the method uses OCSP
	log    logrus.FieldLogger

	onUpdate atomic.Pointer[func()]

	warnings *logthrottle.Throttle[string] // crl_unavailable and crl_rejected lines

	mu      sync.Mutex
	audited *Material // the last material whose CRL files were audited

	bundleMu     sync.Mutex        // serialises checkBundle
	bundleStatus map[string]string // bundle CA (DER) -> its last logged status; guarded by bundleMu
	caRevoked    atomic.Int64      // bundle CAs found revoked by the last checkBundle

	checked   atomic.Uint64
	revoked   atomic.Uint64
	unavail   atomic.Uint64
	startOnce sync.Once
}

// NewRevocationChecker returns a checker for policy over the material of
// store. If policy.Disabled it checks nothing. Start begins fetching.
func NewRevocationChecker(policy RevocationPolicy, store *Store, log logrus.FieldLogger) *RevocationChecker {
	if log == nil {
		l := logrus.New()
		l.SetOutput(discard{})
		log = l
	}
	r := &RevocationChecker{policy: policy, store: store, log: log.WithField(audit.Component, "revocation"),
		warnings: &logthrottle.Throttle[string]{Interval: warnInterval, Max: maxWarnKeys}}
	var fetcher *CRLFetcher
	if !policy.Disabled && (policy.Fetch && policy.useCRL() || policy.useOCSP()) {
		fetcher = NewCRLFetcher(policy.FetchOptions)
	}
	if !policy.Disabled && policy.Fetch && policy.useCRL() {
		r.crls = NewCRLStore(CRLStoreConfig{
			Fetcher:         fetcher,
			RefreshInterval: policy.RefreshInterval,
			Log:             log,
			OnUpdate:        func(string) { r.notify() },
		})
	}
	if policy.useOCSP() {
		r.ocsp = NewOCSPStore(OCSPStoreConfig{
			Fetcher:         fetcher,
			RefreshInterval: policy.RefreshInterval,
			MaxResponses:    policy.OCSPMaxResponses,
			GET:             policy.OCSPGET,
			Log:             log,
			OnUpdate:        r.notify,
		})
	}
	return r
}

// Policy returns the policy r enforces.
func (r *RevocationChecker) Policy() RevocationPolicy { return r.policy }

// OnUpdate sets fn to run whenever the CRLs in use change (a fetch brought a
// new CRL). The caller uses it to re-check live sessions; a reload of the
// CRL files re-checks them itself, after swapping the material.
func (r *RevocationChecker) OnUpdate(fn func()) { r.onUpdate.Store(&fn) }

// notify runs when a fetch brought a new CRL: the bundle's CAs are looked
// at again, then the caller's hook re-checks live sessions.
func (r *RevocationChecker) notify() {
	r.checkBundle(r.store.Material())
	if fn := r.onUpdate.Load(); fn != nil {
		(*fn)()
	}
}

// Start launches fetching, registers the Distribution Points of the current
// material's CA certificates, and waits until each has had one fetch attempt
// or the bootstrap timeout (or ctx) ends. Then it logs the revocation status
// of every intermediate of the CA bundle (ca_revoked for a revoked one), and
// one ca_unchecked warning naming those whose issuer is not in the bundle.
// It never fails: a CRL that cannot be fetched now is handled by the policy
// later.
func (r *RevocationChecker) Start(ctx context.Context) {
	if r.policy.Disabled {
		r.log.WithField(audit.Event, audit.RevocationOff).Warn("revocation checking is DISABLED (--crl-disable): revoked certificates are accepted")
		return
	}
	if TestAllowanceActive() {
		r.log.Warn("TEST BUILD: the CRL fetcher may reach addresses the SSRF guard refuses or has test-sized CRL store caps (TUNNEL_TEST_CRL_ALLOW, TUNNEL_TEST_CRL_CAPS); never run this binary in production")
	}
	m := r.store.Material()
	if m == nil {
		return
	}
	r.auditFiles(m)
	r.warnUnchecked(m)
	r.startOnce.Do(func() {
		if r.crls != nil {
			r.crls.Start()
		}
		if r.ocsp != nil {
			r.ocsp.Start()
		}
	})
	urls, keys := r.discoverBundle(m)
	if len(urls)+len(keys) > 0 {
		ctx, cancel := context.WithTimeout(ctx, r.policy.BootstrapTimeout)
		start := time.Now()
		var err error
		if len(urls) > 0 {
			err = r.crls.Wait(ctx, urls)
		}
		if err == nil && len(keys) > 0 {
			err = r.ocsp.Wait(ctx, keys)
		}
		cancel()
		entry := r.log.WithFields(logrus.Fields{"urls": len(urls), "ocsp_responses": len(keys), audit.DurationMS: time.Since(start).Milliseconds()})
		if err != nil {
			entry.Warn("revocation bootstrap deadline reached; fetching goes on in the background")
		} else {
			entry.Info("revocation bootstrap done")
		}
	}
	r.checkBundle(m)
}

// Reloaded takes in the material a reload just swapped into the store: it
// audits its CRL files, registers the Distribution Points of its CA
// certificates, warns about intermediates it cannot check, and logs the
// status of every bundle intermediate, as Start does, without waiting for
// any fetch (a fetch that brings a CRL later looks at the bundle again). The
// caller re-checks live sessions afterwards.
func (r *RevocationChecker) Reloaded() {
	m := r.store.Material()
	if r.policy.Disabled || m == nil {
		return
	}
	if r.needAudit(m) {
		r.auditFiles(m)
	}
	r.warnUnchecked(m)
	r.discoverBundle(m)
	r.checkBundle(m)
}

// discoverBundle registers, pinned, the Distribution Points and OCSP
// responders of every CA certificate of m that has its issuer in m, and
// returns the URLs and the OCSP entries whose first fetch has not ended.
func (r *RevocationChecker) discoverBundle(m *Material) (urls, keys []string) {
	if m == nil || r.policy.EndEntityOnly || r.policy.Disabled {
		return nil, nil
	}
	now := time.Now()
	for _, ca := range m.CACerts {
		issuer := m.caIssuer(ca)
		if issuer == nil {
			continue
		}
		if r.crls != nil {
			u, _ := r.crls.discover(ca, issuer, true)
			urls = append(urls, u...)
		}
		if r.ocsp != nil {
			keys = append(keys, r.ocsp.lookup(ca, issuer, true, true, now).pending...)
		}
	}
	if r.crls != nil {
		r.crls.pinOnly(urls)
	}
	if r.ocsp != nil {
		r.ocsp.unpin(func(c *x509.Certificate) bool { return m.caIssuer(c) != nil })
	}
	return urls, keys
}

// warnUnchecked logs one ca_unchecked line naming the intermediates of m
// whose issuer is not in m.
func (r *RevocationChecker) warnUnchecked(m *Material) {
	cs := m.UncheckedCAs()
	if len(cs) == 0 || r.policy.EndEntityOnly {
		return
	}
	names := make([]string, len(cs))
	for i, c := range cs {
		names[i] = fmt.Sprintf("%s (serial %s)", truncate(c.Subject.String(), 100), serialText(c.SerialNumber))
	}
	r.log.WithFields(logrus.Fields{audit.Event: audit.CAUnchecked, "ca_certs": truncate(strings.Join(names, "; "), 1000)}).
		Warn("the CA bundle holds intermediate CA certificates whose issuer it does not hold: their revocation cannot be checked (add the issuing CA to the bundle)")
}

// checkBundle looks at every CA certificate of m whose issuer is in m with
// the CRLs in hand, and logs what changed since it last looked: a revoked
// one at error level (ca_revoked: every chain through it is refused, and
// the caller's re-check closes live sessions through it), one that needs a
// CRL and has none usable at warning level (crl_unavailable), and one that
// is usable again at info level (ca_reinstated). It never waits for a fetch.
func (r *RevocationChecker) checkBundle(m *Material) {
	if m == nil || r.policy.Disabled || r.policy.EndEntityOnly {
		return
	}
	r.bundleMu.Lock()
	defer r.bundleMu.Unlock()
	now := time.Now()
	status := make(map[string]string)
	var revoked int64
	for _, ca := range m.CACerts {
		issuer := m.caIssuer(ca)
		if issuer == nil {
			continue
		}
		jv := r.judge(m, ca, issuer, true, true, now)
		v, why := jv.revoked, jv.why
		st := "ok"
		switch {
		case v != nil:
			st, revoked = "revoked", revoked+1
		case !jv.ok:
			st = "unavailable:" + why
		}
		key := string(ca.Raw)
		status[key] = st
		prev, seen := r.bundleStatus[key]
		if prev == st || !seen && st == "ok" {
			continue
		}
		log := r.log.WithFields(logrus.Fields{audit.Serial: serialText(ca.SerialNumber), audit.Subject: truncate(ca.Subject.String(), 200),
			audit.Issuer: truncate(issuer.Subject.String(), 200)})
		switch {
		case v != nil:
			log.WithFields(logrus.Fields{audit.Event: audit.CARevoked, audit.Source: truncate(v.Source, 200),
				"revoked_at": v.RevokedAt.UTC().Format(time.RFC3339)}).
				Error("a CA certificate of the CA bundle is revoked: every chain through it is refused and live sessions through it are closed")
		case st != "ok":
			action := "chains through it are admitted (fail-open)"
			if r.policy.DenyOnUnavailable {
				action = "chains through it are refused (--crl-deny-on-unavailable)"
			}
			event, what := audit.CRLUnavailable, "CRL"
			if jv.ocspFailed {
				event, what = audit.OCSPUnavailable, "OCSP response"
			}
			log.WithFields(logrus.Fields{audit.Event: event, audit.Reason: why,
				audit.Source: truncate(strings.Join(jv.sources, ", "), 300)}).
				Warn("no usable " + what + " for a CA certificate of the CA bundle; " + action)
		default:
			log.WithField(audit.Event, audit.CAReinstated).Info("a CA certificate of the CA bundle has a usable CRL that does not list it")
		}
	}
	r.bundleStatus = status
	r.caRevoked.Store(revoked)
}

// Close stops fetching and waits for fetches in flight.
func (r *RevocationChecker) Close() {
	r.startOnce.Do(func() {}) // a Close before Start must not start it later
	if r.crls != nil {
		r.crls.Close()
	}
	if r.ocsp != nil {
		r.ocsp.Close()
	}
	if r.crls == nil && r.ocsp != nil {
		r.ocsp.cfg.Fetcher.Close() // the CRL store closes it otherwise
	}
}

// Refresh refetches every Distribution Point and OCSP response now (SIGHUP,
// admin endpoint).
func (r *RevocationChecker) Refresh() {
	if r.crls != nil {
		r.crls.RefreshAll()
	}
	if r.ocsp != nil {
		r.ocsp.RefreshAll()
	}
}

// Stats returns the checker's counters.
func (r *RevocationChecker) Stats() RevocationStats {
	st := RevocationStats{Checked: r.checked.Load(), Revoked: r.revoked.Load(), Unavailable: r.unavail.Load(),
		CRLAges: map[string]time.Duration{}, CARevoked: int(r.caRevoked.Load())}
	now := time.Now()
	if m := r.store.Material(); m != nil {
		for _, c := range m.CRLs {
			st.CRLAges[c.Source] = now.Sub(c.List.ThisUpdate)
		}
	}
	if r.crls != nil {
		st.Store = r.crls.Stats()
		for url, c := range r.crls.cachedCRLs() {
			st.CRLAges[url] = now.Sub(c.List.ThisUpdate)
		}
	}
	if r.ocsp != nil {
		st.OCSP = r.ocsp.Stats()
	}
	return st
}

// CheckChains checks the verified chains of a peer. It accepts if one chain
// passes Check (a cross-signed path may avoid a revoked intermediate), and
// otherwise returns the first chain's error. With no chains there is nothing
// to check.
func (r *RevocationChecker) CheckChains(chains [][]*x509.Certificate) error {
	var first error
	for _, ch := range chains {
		err := r.Check(ch)
		if err == nil {
			return nil
		}
		if first == nil {
			first = err
		}
	}
	return first
}

// Revoked returns the first certificate that a usable CRL lists as revoked
// in every one of chains, or nil. Chains are extended through the CA
// bundle as in Check, so a revoked bundle intermediate is found. Unlike
// CheckChains it never waits for a fetch, registers no Distribution Point
// and logs nothing about unavailable CRLs: it is for re-checking live
// sessions, often many at once, when the CRLs change.
func (r *RevocationChecker) Revoked(chains [][]*x509.Certificate) *RevokedError {
	if r.policy.Disabled || len(chains) == 0 {
		return nil
	}
	m := r.store.Material()
	var first *RevokedError
	for _, chain := range chains {
		found := r.revokedIn(m, m.extendChain(chain))
		if found == nil {
			return nil // one clean path is enough, as in CheckChains
		}
		if first == nil {
			first = found
		}
	}
	return first
}

func (r *RevocationChecker) revokedIn(m *Material, chain []*x509.Certificate) *RevokedError {
	n := len(chain) - 1
	if r.policy.EndEntityOnly {
		n = min(n, 1)
	}
	now := time.Now()
	for i := 0; i < n; i++ {
		// Never registers (see CRLStore.known): a re-check must not churn
		// the stores.
		if v := r.judge(m, chain[i], chain[i+1], false, false, now).revoked; v != nil {
			v.Depth = i
			return v
		}
	}
	return nil
}

// Check checks one verified chain, leaf first. crypto/x509 ends a chain at
// the first certificate of the CA bundle it reaches, even an intermediate,
// so Check first extends the chain with that certificate's issuers from the
// bundle, up to a self-signed root or one whose issuer the bundle lacks
// (the trust anchor, which is not checked). For each certificate (or the
// leaf only, by policy) it looks for usable CRLs issued by the next
// certificate: files of the current material and CRLs fetched from the
// certificate's Distribution Points, which it registers for fetching if
// new. A usable CRL verifies against the issuer and is fresh, or stale
// within the grace period. If a usable CRL lists the certificate, Check
// returns a *RevokedError. A certificate needs a CRL if it has any
// Distribution Point (of any scheme) or a CRL file names its issuer; if it
// needs one and none is usable (a scheme we do not fetch, a URL refused
// before any request, a URL kept out by a cap, fetching off, a failed or
// pending fetch, a bad, expired or future CRL), Check logs crl_unavailable
// and returns nil (fail-open) or an *UnavailableError (fail-closed).
func (r *RevocationChecker) Check(chain []*x509.Certificate) error {
	if r.policy.Disabled || len(chain) == 0 {
		return nil
	}
	m := r.store.Material()
	chain = m.extendChain(chain)
	if len(chain) < 2 {
		return nil
	}
	r.checked.Add(1)
	if m != nil && r.needAudit(m) {
		r.auditFiles(m)
	}
	n := len(chain) - 1
	if r.policy.EndEntityOnly {
		n = min(n, 1)
	}
	for i := 0; i < n; i++ {
		if err := r.checkCert(m, chain[i], chain[i+1], i); err != nil {
			return err
		}
	}
	return nil
}

// discover returns the tracked and the unusable Distribution Points of
// cert. With fetching off every one is unusable. pin marks a CA bundle
// certificate's.
func (r *RevocationChecker) discover(cert, issuer *x509.Certificate, pin bool) ([]string, []UnusableDP) {
	if r.crls == nil {
		var un []UnusableDP
		for _, u := range cert.CRLDistributionPoints {
			un = append(un, UnusableDP{URL: u, Reason: ReasonFetchDisabled})
		}
		return nil, un
	}
	return r.crls.discover(cert, issuer, pin)
}

// checkCert checks cert, issued by issuer, at depth in its chain, by the
// policy's method (see judge).
func (r *RevocationChecker) checkCert(m *Material, cert, issuer *x509.Certificate, depth int) error {
	pin := m.caIssuer(cert) != nil
	jv := r.judge(m, cert, issuer, true, pin, time.Now())
	if jv.revoked == nil && !jv.ok && r.policy.DenyOnUnavailable && r.waitFirstFetch(jv) {
		jv = r.judge(m, cert, issuer, true, pin, time.Now())
	}
	if jv.revoked != nil {
		r.revoked.Add(1)
		jv.revoked.Depth = depth
		return jv.revoked
	}
	if jv.ok {
		return nil
	}
	r.unavail.Add(1)
	serial := serialText(cert.SerialNumber)
	action := "allowing (fail-open)"
	if r.policy.DenyOnUnavailable {
		action = "refusing (--crl-deny-on-unavailable)"
	}
	event, what := audit.CRLUnavailable, "CRL"
	if jv.ocspFailed {
		event, what = audit.OCSPUnavailable, "OCSP response"
	}
	r.warn("unavailable|"+event+"|"+jv.why+"|"+strings.Join(jv.sources, "|"), logrus.Fields{
		audit.Event: event, audit.Reason: jv.why, audit.Serial: serial,
		audit.Source: truncate(strings.Join(jv.sources, ", "), 300),
	}, "no usable "+what+" for a certificate that needs one; "+action)
	if r.policy.DenyOnUnavailable {
		return &UnavailableError{Serial: serial, Subject: cert.Subject.String(), Sources: jv.sources, Why: jv.why, OCSP: jv.ocspFailed}
	}
	return nil
}

// judgement is the revocation status of one certificate by the policy's
// method, from every source it uses.
type judgement struct {
	revoked *RevokedError // a usable source says revoked
	ok      bool          // else: a usable answer that it is not, or nothing needed
	// With ok false: why, from which sources, and whether it is the OCSP
	// part that failed (else the CRL part).
	why        string
	sources    []string
	ocspFailed bool
	// First fetches that have not ended, for the fail-closed wait.
	crlURLs  []string
	ocspKeys []string
}

// judge finds cert's status, cert issued by issuer, at now. With register
// it registers new Distribution Points and responders for fetching (pin:
// as a CA bundle certificate's); without, it reads what the stores hold.
//
//   - crl: a usable CRL for cert's issuer, if cert needs one (see Check).
//   - ocsp: a good response from a responder cert names, if it names one.
//   - both: each of the two that cert needs; revoked if either says so.
//   - prefer-ocsp: a good or revoked response if cert names a responder;
//     otherwise, or without a usable answer, the CRL rule; a certificate
//     that names a responder and has neither is unavailable.
//
// An "unknown" OCSP answer is no answer (ReasonOCSPUnknown).
func (r *RevocationChecker) judge(m *Material, cert, issuer *x509.Certificate, register, pin bool, now time.Time) judgement {
	var j judgement
	oNeeds, oGood := false, false
	if r.policy.useOCSP() && r.ocsp != nil {
		ov := r.ocsp.lookup(cert, issuer, register, pin, now)
		oNeeds, j.ocspKeys = ov.needs, ov.pending
		if ov.status != nil {
			switch ov.status.Status {
			case ocsp.Good:
				oGood = true
			case ocsp.Revoked:
				j.revoked = &RevokedError{Serial: serialText(cert.SerialNumber), Subject: cert.Subject.String(),
					Source: ov.status.Source, RevokedAt: ov.status.RevokedAt, Via: viaOCSP}
				return j
			default:
				ov.why = ReasonOCSPUnknown
			}
		}
		if oNeeds && !oGood {
			j.why, j.sources, j.ocspFailed = ov.why, ov.sources, true
		}
		if r.policy.Method == RevocationOCSP || r.policy.Method == RevocationPreferOCSP && oGood {
			j.ok = !oNeeds || oGood
			return j
		}
		if r.policy.Method == RevocationPreferOCSP && register && r.policy.DenyOnUnavailable && len(j.ocspKeys) > 0 {
			// Fail-closed waits for the preferred answer before it falls
			// back (fail-open falls back at once, below).
			return j
		}
	}
	var urls []string
	var unusable []UnusableDP
	switch {
	case register:
		urls, unusable = r.discover(cert, issuer, pin)
	case r.crls != nil:
		urls = r.crls.known(cert)
	}
	v, usable, needs, why := r.evaluate(m, cert, issuer, urls, unusable, now)
	if v != nil {
		j.revoked = v
		return j
	}
	for _, u := range urls {
		if r.crls != nil && !r.crls.Attempted(u) {
			j.crlURLs = append(j.crlURLs, u)
		}
	}
	crlOK := usable || !needs
	switch r.policy.Method {
	case RevocationBoth:
		j.ok = (!oNeeds || oGood) && crlOK
	case RevocationPreferOCSP:
		// OCSP was needed and gave no good answer (or was not needed).
		j.ok = oNeeds && needs && usable || !oNeeds && crlOK
	default:
		j.ok = crlOK
	}
	if !j.ok && !j.ocspFailed {
		j.why, j.sources, j.ocspFailed = why, sourcesOf(m, issuer, urls, unusable), false
	}
	return j
}

// sourcesOf names where a CRL for a certificate of issuer was looked for:
// its Distribution Points, usable or not, and the CRL files naming issuer.
func sourcesOf(m *Material, issuer *x509.Certificate, urls []string, unusable []UnusableDP) []string {
	sources := append([]string(nil), urls...)
	for _, u := range unusable {
		sources = append(sources, u.URL)
	}
	for _, c := range m.filesFor(issuer) {
		sources = append(sources, c.Source)
	}
	return sources
}

// evaluate looks at every candidate CRL for cert: the CRL files naming
// issuer and the CRLs cached for urls. It returns a revocation verdict,
// whether any usable CRL was found, whether cert needs one (it has a
// Distribution Point, whatever its fate, or a CRL file names its issuer),
// and why none was usable.
func (r *RevocationChecker) evaluate(m *Material, cert, issuer *x509.Certificate, urls []string, unusable []UnusableDP, now time.Time) (verdict *RevokedError, usable, needs bool, why string) {
	candidates := m.filesFor(issuer)
	needs = len(candidates) > 0 || len(cert.CRLDistributionPoints) > 0
	if len(unusable) > 0 {
		why = unusable[0].Reason
	}
	for _, u := range urls {
		if c := r.crls.CRL(u); c != nil {
			candidates = append(candidates, c)
		} else if r.crls.Attempted(u) {
			why = ReasonFetchFailed
		} else if why == "" {
			why = ReasonNotFetchedYet
		}
	}
	for _, c := range candidates {
		if err := c.Verify(issuer); err != nil {
			r.warn("rejected|"+c.Source, logrus.Fields{audit.Event: audit.CRLRejected, audit.Source: truncate(c.Source, 200),
				audit.Issuer: truncate(issuer.Subject.String(), 200), audit.Error: err.Error()},
				"CRL ignored: it does not verify against the certificate's issuer")
			why = "bad_signature"
			continue
		}
		switch c.freshness(now, r.policy.EnforceExpiration, r.policy.StaleGrace) {
		case crlExpired:
			why = "expired"
			continue
		case crlNotYetValid:
			why = "not_yet_valid"
			continue
		}
		usable = true
		if e, ok := c.Revoked(cert.SerialNumber); ok {
			return &RevokedError{Serial: serialText(cert.SerialNumber), Subject: cert.Subject.String(),
				Source: c.Source, RevokedAt: e.RevocationTime}, true, needs, ""
		}
	}
	if why == "" {
		why = ReasonNotFetchedYet
	}
	return nil, usable, needs, why
}

// waitFirstFetch waits up to denyWait for the first fetches of j's CRL
// URLs and OCSP responses, and reports whether there were any.
func (r *RevocationChecker) waitFirstFetch(j judgement) bool {
	if len(j.crlURLs)+len(j.ocspKeys) == 0 {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), denyWait)
	defer cancel()
	if len(j.crlURLs) > 0 && r.crls != nil {
		_ = r.crls.Wait(ctx, j.crlURLs) // a timeout leaves them unavailable
	}
	if len(j.ocspKeys) > 0 && r.ocsp != nil {
		_ = r.ocsp.Wait(ctx, j.ocspKeys)
	}
	return true
}

// filesFor returns the CRL files of m that name issuer as their issuer.
func (m *Material) filesFor(issuer *x509.Certificate) []*CRL {
	if m == nil {
		return nil
	}
	var out []*CRL
	for _, c := range m.CRLs {
		if c.IssuedBy(issuer) {
			out = append(out, c)
		}
	}
	return out
}

func (r *RevocationChecker) needAudit(m *Material) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.audited != m
}

// auditFiles checks each CRL file of m against the configured CAs once per
// material, so an operator hears at start-up or reload, not at the first
// handshake, that a CRL file is for the wrong CA or badly signed.
func (r *RevocationChecker) auditFiles(m *Material) {
	r.mu.Lock()
	if r.audited == m {
		r.mu.Unlock()
		return
	}
	r.audited = m
	r.mu.Unlock()
	now := time.Now()
	for _, c := range m.CRLs {
		log := r.log.WithField(audit.Source, c.Source)
		var issuer *x509.Certificate
		for _, ca := range m.CACerts {
			if c.IssuedBy(ca) {
				issuer = ca
				break
			}
		}
		switch {
		case issuer == nil:
			// Normal for an intermediate's CRL: peers present intermediates.
			// Its signature is checked against each one that names it.
			log.WithField(audit.Issuer, truncate(c.List.Issuer.String(), 200)).
				Info("CRL file's issuer is not a configured CA; it is checked against the intermediates peers present")
		case c.Verify(issuer) != nil:
			log.WithFields(logrus.Fields{audit.Event: audit.CRLRejected, audit.Issuer: truncate(issuer.Subject.String(), 200),
				audit.Error: c.Verify(issuer).Error()}).Warn("CRL file ignored: it does not verify against its issuing CA")
		default:
			f := c.freshness(now, r.policy.EnforceExpiration, r.policy.StaleGrace)
			entry := log.WithFields(logrus.Fields{"entries": len(c.List.RevokedCertificateEntries),
				audit.Issuer: truncate(issuer.Subject.String(), 200), "next_update": c.List.NextUpdate.UTC().Format(time.RFC3339)})
			switch f {
			case crlExpired:
				entry.WithField(audit.Event, audit.CRLUnavailable).Warn("CRL file is expired past the grace period; it is not used")
			case crlStale:
				entry.Warn("CRL file is past its nextUpdate; used within the grace period")
			case crlNotYetValid:
				entry.WithField(audit.Event, audit.CRLUnavailable).Warn("CRL file's thisUpdate is in the future; it is not used")
			default:
				entry.WithField(audit.Event, audit.CRLRefreshed).Info("CRL file loaded")
			}
		}
	}
}

// warn logs fields at warning level at most once per key per warnInterval,
// with the number of events the line stands for.
func (r *RevocationChecker) warn(key string, fields logrus.Fields, msg string) {
	n, _, ok := r.warnings.Hit(key)
	if !ok {
		return
	}
	if n > 1 {
		fields[audit.Count] = n
	}
	r.log.WithFields(fields).Warn(msg)
}

// findIssuer returns the certificate among cas that issued c, or nil; a
// self-signed c has no issuer to check it.
func findIssuer(c *x509.Certificate, cas []*x509.Certificate) *x509.Certificate {
	if selfSigned(c) {
		return nil
	}
	for _, ca := range cas {
		if ca != c && string(ca.RawSubject) == string(c.RawIssuer) && c.CheckSignatureFrom(ca) == nil {
			return ca
		}
	}
	return nil
}

// selfSigned reports whether c names itself as its issuer: a root, whose
// revocation no CRL can state.
func selfSigned(c *x509.Certificate) bool { return bytes.Equal(c.RawIssuer, c.RawSubject) }
