package trust

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/ocsp"

	"github.com/tunnel-dev/tunnel/internal/audit"
)

// StaplerConfig configures a Stapler.
type StaplerConfig struct {
	// Store holds the server's material: the staple is for the leaf of its
	// current certificate, whose issuer must follow it in the chain or be
	// in the CA bundle. Required.
	Store *Store
	// File, if set, is a DER or PEM ("OCSP RESPONSE") response to staple,
	// read at NewStapler and again on Refresh; otherwise the response is
	// fetched from the responder the leaf's Authority Information Access
	// names.
	File string
	// FetchOptions configure the fetcher (the CRL fetcher's guard and
	// caps); zero means DefaultFetchOptions.
	FetchOptions FetchOptions
	// GET sends the request by GET without a nonce; see OCSPStoreConfig.
	GET bool
	// Log receives one line per renewal and per failure; nil discards.
	Log logrus.FieldLogger
}

// StapleStatus is a snapshot of a Stapler's state.
type StapleStatus struct {
	Source      string    // the responder URL or the file
	Have        bool      // a good, in-date response for the current leaf is stapled
	ThisUpdate  time.Time // of the stapled response
	NextUpdate  time.Time
	Renewals    uint64
	Failures    uint64
	LastError   error
	LastErrorAt time.Time
}

// ErrNoResponder is wrapped by NewStapler's error for a server certificate
// that names no OCSP responder and no staple file is given.
var ErrNoResponder = errors.New("the certificate names no OCSP responder (Authority Information Access)")

// Stapler keeps an OCSP response for the server's own certificate, for
// crypto/tls to staple (WithStapler): fetched from the issuer's responder
// through the CRL fetcher and renewed before its nextUpdate (at 90 % of its
// validity, as the OCSP store does), or read from a file. Only a response
// that verifies against the issuer and says good is stapled; a failed
// renewal keeps the previous one while it is in date, and retries. Create it
// with NewStapler; Start, Refresh and Close it. Safe for concurrent use.
type Stapler struct {
	cfg     StaplerConfig
	fetcher *CRLFetcher
	log     logrus.FieldLogger

	cur  atomic.Pointer[staple]           // the response stapled now, or nil
	last atomic.Pointer[x509.Certificate] // the leaf of the last renewal attempt

	mu         sync.Mutex
	renewals   uint64    // guarded by mu
	failures   uint64    // guarded by mu
	lastErr    error     // guarded by mu
	lastErrAt  time.Time // guarded by mu
	lastSource string    // guarded by mu
	wake       chan struct{}
	quiet      bool // during NewStapler's first attempt with a file, whose error it returns instead of logging
	ctx        context.Context
	cancel     context.CancelFunc
	wg         sync.WaitGroup
	startOnce  sync.Once
}

// staple is one verified response for one leaf.
type staple struct {
	leaf *x509.Certificate
	st   *OCSPStatus
}

// NewStapler checks cfg and gets a first response for the current leaf. A
// file that does not parse, verify or say good is an error; so is a leaf
// that names no responder (without a file). A responder that cannot be
// reached is not: the server starts without a staple, logs the failure,
// and Start keeps trying.
func NewStapler(ctx context.Context, cfg StaplerConfig) (*Stapler, error) {
	if cfg.Store == nil || cfg.Store.Material() == nil {
		return nil, errors.New("trust: stapler: no server material")
	}
	if cfg.FetchOptions == (FetchOptions{}) {
		cfg.FetchOptions = DefaultFetchOptions()
	}
	log := cfg.Log
	if log == nil {
		l := logrus.New()
		l.SetOutput(discard{})
		log = l
	}
	s := &Stapler{cfg: cfg, fetcher: NewCRLFetcher(cfg.FetchOptions), log: log.WithField(audit.Component, "ocsp_staple"),
		wake: make(chan struct{}, 1)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	leaf, issuer, err := s.target()
	if err != nil {
		return nil, err
	}
	if cfg.File == "" && len(leaf.OCSPServer) == 0 {
		return nil, fmt.Errorf("trust: stapler: %w: give a staple file instead", ErrNoResponder)
	}
	s.quiet = cfg.File != "" // no goroutine runs yet
	err = s.renew(ctx, leaf, issuer)
	s.quiet = false
	if err != nil && cfg.File != "" {
		return nil, err
	}
	return s, nil
}

// target returns the current leaf and its issuer.
func (s *Stapler) target() (leaf, issuer *x509.Certificate, err error) {
	m := s.cfg.Store.Material()
	leaf = m.Certificate.Leaf
	if len(m.Certificate.Certificate) > 1 {
		if c, err := x509.ParseCertificate(m.Certificate.Certificate[1]); err == nil && leaf.CheckSignatureFrom(c) == nil {
			return leaf, c, nil
		}
	}
	for _, c := range m.CACerts {
		if string(c.RawSubject) == string(leaf.RawIssuer) && leaf.CheckSignatureFrom(c) == nil {
			return leaf, c, nil
		}
	}
	return nil, nil, errors.New("trust: stapler: the issuer of the server certificate is neither next in its chain nor in the CA bundle; an OCSP response for it cannot be verified")
}

// Start launches the renewal goroutine; Close stops it.
func (s *Stapler) Start() {
	s.startOnce.Do(func() {
		s.wg.Add(1)
		go s.run()
	})
}

// Close stops renewing and waits for a renewal in flight.
func (s *Stapler) Close() {
	s.startOnce.Do(func() {})
	s.cancel()
	s.wg.Wait()
	s.fetcher.Close()
}

// Refresh renews now: after a reload swapped the certificate, on SIGHUP, or
// when the staple file changed.
func (s *Stapler) Refresh() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Staple returns the DER response to staple for leaf: the current one if it
// is for leaf and still in date, else nil. A leaf it has not tried to renew
// for yet (the certificate was just swapped) is renewed at once; otherwise
// retries keep their schedule, so handshakes never drive fetches.
func (s *Stapler) Staple(leaf *x509.Certificate) []byte {
	cur := s.cur.Load()
	if cur == nil || !cur.leaf.Equal(leaf) || cur.st.usableAt(time.Now()) != "" {
		if last := s.last.Load(); last == nil || !last.Equal(leaf) {
			s.Refresh()
		}
		return nil
	}
	return cur.st.Raw
}

// Status reports the stapler's state for /readyz, metrics and logs.
func (s *Stapler) Status() StapleStatus {
	s.mu.Lock()
	st := StapleStatus{Source: s.lastSource, Renewals: s.renewals, Failures: s.failures, LastError: s.lastErr, LastErrorAt: s.lastErrAt}
	s.mu.Unlock()
	if cur := s.cur.Load(); cur != nil && cur.st.usableAt(time.Now()) == "" && cur.leaf.Equal(s.cfg.Store.Material().Certificate.Leaf) {
		st.Have, st.ThisUpdate, st.NextUpdate = true, cur.st.ThisUpdate, cur.st.NextUpdate
	}
	return st
}

func (s *Stapler) run() {
	defer s.wg.Done()
	timer := time.NewTimer(s.nextWait())
	defer timer.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.wake:
		case <-timer.C:
		}
		if leaf, issuer, err := s.target(); err != nil {
			s.failed(err)
		} else {
			_ = s.renew(s.ctx, leaf, issuer) // logged and counted
		}
		timer.Reset(s.nextWait())
	}
}

// nextWait is the time to the next renewal: ocspRefreshAfter of the current
// response, or the retry delay without one.
func (s *Stapler) nextWait() time.Duration {
	cur := s.cur.Load()
	if cur == nil || s.failureCount() > 0 {
		return fetchRetryMin << min(s.failureCount(), 6) / 2
	}
	return ocspRefreshAfter(cur.st, time.Now(), 0)
}

func (s *Stapler) failureCount() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastErr == nil {
		return 0
	}
	return min(s.failures, 6)
}

// renew gets, verifies and publishes a response for leaf.
func (s *Stapler) renew(ctx context.Context, leaf, issuer *x509.Certificate) error {
	s.last.Store(leaf)
	var (
		der    []byte
		nonce  []byte
		source = s.cfg.File
		err    error
	)
	if s.cfg.File != "" {
		der, err = readStapleFile(s.cfg.File)
	} else {
		source = leaf.OCSPServer[0]
		if !s.cfg.GET {
			nonce = newNonce()
		}
		var req []byte
		if req, err = newOCSPRequest(leaf, issuer, nonce); err == nil {
			der, err = s.fetcher.FetchOCSP(ctx, source, req, !s.cfg.GET, DefaultOCSPMaxBytes)
		}
	}
	s.mu.Lock()
	s.lastSource = source
	s.mu.Unlock()
	var st *OCSPStatus
	if err == nil {
		st, err = verifyOCSP(der, leaf, issuer, nonce, time.Now(), source)
	}
	if err == nil && st.Status != ocsp.Good {
		err = fmt.Errorf("the responder says %s; not stapled", ocspStatusName(st.Status))
	}
	if err != nil {
		err = fmt.Errorf("trust: OCSP staple from %q: %w", truncate(source, 200), err)
		s.failed(err)
		return err
	}
	s.cur.Store(&staple{leaf: leaf, st: st})
	s.mu.Lock()
	s.renewals++
	s.lastErr, s.lastErrAt = nil, time.Time{}
	s.mu.Unlock()
	fields := logrus.Fields{audit.Event: audit.StapleRefreshed, audit.Source: truncate(source, 200),
		"this_update": st.ThisUpdate.UTC().Format(time.RFC3339), "next_update": nextUpdateText(st)}
	s.log.WithFields(fields).Info("OCSP staple renewed")
	return nil
}

func (s *Stapler) failed(err error) {
	s.mu.Lock()
	s.failures++
	s.lastErr, s.lastErrAt = err, time.Now()
	s.mu.Unlock()
	if s.quiet {
		return
	}
	have := s.cur.Load() != nil && s.cur.Load().st.usableAt(time.Now()) == ""
	s.log.WithFields(logrus.Fields{audit.Event: audit.StapleFailed, audit.Error: truncate(err.Error(), 500), "have_previous": have}).
		Warn("OCSP staple not renewed; the previous one stays while in date")
}

// readStapleFile reads a DER response, or the first "OCSP RESPONSE" PEM
// block of the file.
func readStapleFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(data) > DefaultOCSPMaxBytes {
		return nil, fmt.Errorf("larger than %d bytes", DefaultOCSPMaxBytes)
	}
	if len(data) > 0 && data[0] == 0x30 {
		return data, nil
	}
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errors.New(`neither a DER OCSP response nor a PEM block of type "OCSP RESPONSE"`)
		}
		if b.Type == "OCSP RESPONSE" {
			return b.Bytes, nil
		}
	}
}
