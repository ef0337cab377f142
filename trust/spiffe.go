package trust

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tunnel-dev/tunnel/internal/audit"
)

// DefaultSPIFFEStartTimeout is how long NewSPIFFESource waits for the first
// X.509-SVID from the Workload API before it gives up.
const DefaultSPIFFEStartTimeout = 30 * time.Second

// SPIFFE Workload API retry bounds: after a failed watch the source retries
// after spiffeRetryMin, doubling up to spiffeRetryMax, and from
// spiffeRetryMin again once an update arrives.
const (
	spiffeRetryMin = 250 * time.Millisecond
	spiffeRetryMax = 5 * time.Second
)

// SPIFFEMaterial is what a Material from the SPIFFE Workload API holds on
// top of a certificate and a CA pool: the role's own SPIFFE ID and the
// bundles of every trust domain it knows, its own and federated ones.
// A peer's X.509-SVID must chain to the bundle of the trust domain in its
// own SPIFFE ID (not to just any CA of the pool), as SPIFFE requires.
type SPIFFEMaterial struct {
	ID      spiffeid.ID
	Bundles *x509bundle.Set
}

// SPIFFEConfig configures a SPIFFESource.
type SPIFFEConfig struct {
	// Addr is the Workload API endpoint: "unix:///run/spire/agent.sock",
	// an absolute socket path (taken as unix://PATH), or "tcp://IP:PORT".
	// Empty means the SPIFFE_ENDPOINT_SOCKET environment variable.
	Addr string
	// ID, if set, picks the X.509-SVID with this SPIFFE ID when the agent
	// issues the workload several; otherwise the first (the Workload API's
	// default SVID) is used.
	ID string
	// StartTimeout bounds how long NewSPIFFESource waits for the first
	// SVID; zero means DefaultSPIFFEStartTimeout, negative is an error.
	StartTimeout time.Duration
	// Log receives one line per update and per failure; nil discards.
	Log logrus.FieldLogger
}

// SPIFFEError is the error of NewSPIFFESource: one line naming the Workload
// API address and what went wrong, e.g. `trust: SPIFFE Workload API
// "unix:///run/spire/agent.sock": no X.509-SVID within 30s: connection
// refused`.
type SPIFFEError struct {
	Addr string
	What string // "no X.509-SVID within 30s", "invalid address", ...
	Err  error  // the last error from the Workload API, if any
}

func (e *SPIFFEError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("trust: SPIFFE Workload API %q: %s", e.Addr, e.What)
	}
	return fmt.Sprintf("trust: SPIFFE Workload API %q: %s: %v", e.Addr, e.What, e.Err)
}

func (e *SPIFFEError) Unwrap() error { return e.Err }

// SPIFFESource is the Source of material from the SPIFFE Workload API: the
// workload's X.509-SVID (chain and key) and the X.509 bundles of its trust
// domain and the federated ones. It watches the API: a rotated SVID or a
// changed bundle becomes new material at once, signalled on Changes. If the
// agent becomes unreachable, or stops issuing this workload an SVID, the
// last material stays in use (its SVID until it expires), the failure is
// logged and shown by Status, and the source retries, 250 ms doubling to
// 5 s. Create it with NewSPIFFESource; Close it. Safe for concurrent use.
type SPIFFESource struct {
	st     *sourceState
	cfg    SPIFFEConfig
	log    logrus.FieldLogger
	client *workloadapi.Client
	cancel context.CancelFunc
	wg     sync.WaitGroup

	first     chan struct{} // closed at the first good material
	firstOnce sync.Once

	mu     sync.Mutex
	logged string // the last failure logged, so a retry loop logs each failure once; guarded by mu
}

// NewSPIFFESource connects to the Workload API, waits up to
// cfg.StartTimeout (or ctx) for a first X.509-SVID that checks out, and
// returns a source that keeps watching. If none comes in time it returns a
// *SPIFFEError naming the address and the last error, and leaves nothing
// running.
func NewSPIFFESource(ctx context.Context, cfg SPIFFEConfig) (*SPIFFESource, error) {
	addr, err := spiffeAddr(cfg.Addr)
	if err != nil {
		return nil, err
	}
	cfg.Addr = addr
	if cfg.StartTimeout < 0 {
		return nil, &SPIFFEError{Addr: addr, What: "start timeout is negative"}
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = DefaultSPIFFEStartTimeout
	}
	if cfg.ID != "" {
		if _, err := spiffeid.FromString(cfg.ID); err != nil {
			return nil, &SPIFFEError{Addr: addr, What: fmt.Sprintf("SVID ID %q is not a SPIFFE ID", truncate(cfg.ID, 200)), Err: err}
		}
	}
	log := cfg.Log
	if log == nil {
		l := logrus.New()
		l.SetOutput(discard{})
		log = l
	}
	wctx, cancel := context.WithCancel(context.Background())
	client, err := workloadapi.New(wctx, workloadapi.WithAddr(addr), workloadapi.WithBackoffStrategy(spiffeBackoff{}))
	if err != nil {
		cancel()
		return nil, &SPIFFEError{Addr: addr, What: "cannot set up a client", Err: err}
	}
	s := &SPIFFESource{st: newSourceState(SourceSPIFFE, addr, true), cfg: cfg, client: client, cancel: cancel,
		log: log.WithFields(logrus.Fields{audit.Component: "spiffe", "source": addr}), first: make(chan struct{})}
	s.wg.Go(func() { _ = client.WatchX509Context(wctx, (*spiffeWatcher)(s)) })

	timer := time.NewTimer(cfg.StartTimeout)
	defer timer.Stop()
	select {
	case <-s.first:
		m := s.Material()
		s.log.WithFields(spiffeFields(m)).Info("X.509-SVID from the SPIFFE Workload API")
		return s, nil
	case <-timer.C:
		err = fmt.Errorf("no X.509-SVID within %s", cfg.StartTimeout)
	case <-ctx.Done():
		err = fmt.Errorf("no X.509-SVID before start-up was cancelled")
	}
	s.Close()
	return nil, &SPIFFEError{Addr: addr, What: err.Error(), Err: s.st.status().LastError}
}

// CheckSPIFFEAddr checks the form of a Workload API address as
// NewSPIFFESource takes it, without connecting, and returns it as the
// source will name it (an absolute path becomes unix://PATH). An empty addr
// means the SPIFFE_ENDPOINT_SOCKET variable. The error is a *SPIFFEError.
func CheckSPIFFEAddr(addr string) (string, error) { return spiffeAddr(addr) }

// spiffeAddr resolves the Workload API address and checks its form.
func spiffeAddr(addr string) (string, error) {
	if addr == "" {
		env, ok := workloadapi.GetDefaultAddress()
		if !ok || env == "" {
			return "", &SPIFFEError{What: "no address: give the Workload API socket, or set " + workloadapi.SocketEnv}
		}
		addr = env
	}
	if strings.HasPrefix(addr, "/") {
		addr = "unix://" + addr
	}
	if err := workloadapi.ValidateAddress(addr); err != nil {
		return "", &SPIFFEError{Addr: addr, What: "invalid address (want unix:///path/to/socket or tcp://IP:PORT)", Err: err}
	}
	return addr, nil
}

// Kind returns SourceSPIFFE.
func (s *SPIFFESource) Kind() string { return SourceSPIFFE }

// Material returns the latest material that checked out.
func (s *SPIFFESource) Material() *Material { return s.st.cur.Load() }

// Changes receives a value after each new SVID or bundle set.
func (s *SPIFFESource) Changes() <-chan struct{} { return s.st.changes }

// Status reports the watch's health and the SVID's expiry.
func (s *SPIFFESource) Status() SourceStatus { return s.st.status() }

// Close stops watching and waits for the watcher.
func (s *SPIFFESource) Close() error {
	s.cancel()
	s.wg.Wait()
	return s.client.Close()
}

// spiffeWatcher is SPIFFESource's workloadapi.X509ContextWatcher; its
// methods run on the watch goroutine.
type spiffeWatcher SPIFFESource

func (w *spiffeWatcher) OnX509ContextUpdate(xc *workloadapi.X509Context) {
	s := (*SPIFFESource)(w)
	m, err := spiffeMaterial(xc, s.cfg.ID)
	if err != nil {
		s.failed(err)
		return
	}
	old := s.Material()
	s.st.take(m)
	s.mu.Lock()
	s.logged = ""
	s.mu.Unlock()
	s.firstOnce.Do(func() { close(s.first) })
	if old == nil {
		return // NewSPIFFESource logs the first
	}
	fields := spiffeFields(m)
	fields[audit.Event] = audit.IdentityUpdated
	fields["svid_rotated"] = !old.Certificate.Leaf.Equal(m.Certificate.Leaf)
	if gone := droppedCAs(old, m); len(gone) > 0 {
		fields["cas_removed"] = len(gone)
		s.log.WithFields(fields).Warn("SPIFFE trust bundle update removed CA certificates: sessions whose chain went through them are closed")
		return
	}
	s.log.WithFields(fields).Info("SPIFFE Workload API update")
}

func (w *spiffeWatcher) OnX509ContextWatchError(err error) {
	s := (*SPIFFESource)(w)
	if status.Code(err) == codes.Canceled || errors.Is(err, context.Canceled) {
		return // Close
	}
	if status.Code(err) == codes.PermissionDenied {
		err = fmt.Errorf("the agent issues this workload no SVID (no registration entry matches it): %w", err)
	}
	s.failed(err)
}

// failed records err and logs it once per distinct message in a row.
func (s *SPIFFESource) failed(err error) {
	s.st.fail(err)
	s.mu.Lock()
	repeat := s.logged == err.Error()
	s.logged = err.Error()
	s.mu.Unlock()
	if repeat || s.Material() == nil {
		return // NewSPIFFESource reports a start-up failure itself
	}
	st := s.st.status()
	s.log.WithFields(logrus.Fields{audit.Event: audit.IdentitySourceFailed, audit.Error: truncate(err.Error(), 500),
		"state": st.State, "not_after": st.NotAfter.UTC().Format(time.RFC3339)}).
		Warn("SPIFFE Workload API unavailable; keeping the last SVID and bundles, retrying")
}

// spiffeMaterial checks an X509Context and makes material of it: the SVID
// with id (or the default one), and a CA pool of every bundle's authorities.
func spiffeMaterial(xc *workloadapi.X509Context, id string) (*Material, error) {
	if xc == nil || len(xc.SVIDs) == 0 {
		return nil, errors.New("the Workload API sent no X.509-SVID")
	}
	svid := xc.DefaultSVID()
	if id != "" {
		var ids []string
		svid = nil
		for _, v := range xc.SVIDs {
			if v.ID.String() == id {
				svid = v
				break
			}
			ids = append(ids, v.ID.String())
		}
		if svid == nil {
			return nil, fmt.Errorf("the Workload API issued no X.509-SVID with ID %q (it issued %s)", id, truncate(strings.Join(ids, ", "), 300))
		}
	}
	if len(svid.Certificates) == 0 || svid.PrivateKey == nil {
		return nil, fmt.Errorf("X.509-SVID %s has no certificate or no key", svid.ID)
	}
	if xc.Bundles == nil || xc.Bundles.Len() == 0 {
		return nil, errors.New("the Workload API sent no X.509 bundle")
	}
	if _, ok := xc.Bundles.Get(svid.ID.TrustDomain()); !ok {
		return nil, fmt.Errorf("the Workload API sent no bundle for the SVID's own trust domain %q", svid.ID.TrustDomain())
	}
	leaf := svid.Certificates[0]
	if !publicKeysEqual(svid.PrivateKey.Public(), leaf.PublicKey) {
		return nil, fmt.Errorf("X.509-SVID %s: key %w", svid.ID, ErrKeyMismatch)
	}
	var cas []*x509.Certificate
	for _, b := range xc.Bundles.Bundles() {
		for _, c := range b.X509Authorities() {
			if !slices.ContainsFunc(cas, c.Equal) {
				cas = append(cas, c)
			}
		}
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	ders := make([][]byte, len(svid.Certificates))
	for i, c := range svid.Certificates {
		ders[i] = c.Raw
	}
	return &Material{
		Certificate: tls.Certificate{Certificate: ders, PrivateKey: svid.PrivateKey, Leaf: leaf},
		CAPool:      pool,
		CACerts:     cas,
		SPIFFE:      &SPIFFEMaterial{ID: svid.ID, Bundles: x509bundle.NewSet(xc.Bundles.Bundles()...)},
		issuers:     bundleIssuers(cas),
	}, nil
}

// droppedCAs returns the CA certificates of old that m no longer holds.
func droppedCAs(old, m *Material) []*x509.Certificate {
	var out []*x509.Certificate
	for _, c := range old.CACerts {
		if !slices.ContainsFunc(m.CACerts, c.Equal) {
			out = append(out, c)
		}
	}
	return out
}

// spiffeFields are the log fields of SPIFFE material: its ID, serial and
// expiry, and the trust domains it has bundles for.
func spiffeFields(m *Material) logrus.Fields {
	var tds []string
	for _, b := range m.SPIFFE.Bundles.Bundles() {
		tds = append(tds, b.TrustDomain().Name())
	}
	slices.Sort(tds)
	return logrus.Fields{"spiffe_id": truncate(m.SPIFFE.ID.String(), 300), audit.Serial: serialText(m.Certificate.Leaf.SerialNumber),
		"not_after": m.Certificate.Leaf.NotAfter.UTC().Format(time.RFC3339), "trust_domains": truncate(strings.Join(tds, ","), 500),
		"ca_certs": len(m.CACerts)}
}

// verifySVID checks a peer's certificates as an X.509-SVID against the
// bundle of its own trust domain in sm, and returns its SPIFFE ID and the
// verified chains. usage is the EKU the peer's role needs.
func verifySVID(certs []*x509.Certificate, sm *SPIFFEMaterial, usage x509.ExtKeyUsage) (spiffeid.ID, [][]*x509.Certificate, error) {
	id, chains, err := x509svid.Verify(certs, sm.Bundles)
	if err != nil {
		return id, nil, &SPIFFEVerifyError{Err: err}
	}
	if err := CheckLeaf(certs[0], usage); err != nil {
		return id, nil, err
	}
	return id, chains, nil
}

// SPIFFEVerifyError is the error of a peer whose certificate is not an
// X.509-SVID of a trust domain the material has a bundle for, or does not
// chain to that trust domain's bundle.
type SPIFFEVerifyError struct{ Err error }

func (e *SPIFFEVerifyError) Error() string {
	return "trust: peer is not a valid X.509-SVID: " + e.Err.Error()
}
func (e *SPIFFEVerifyError) Unwrap() error { return e.Err }

// SPIFFEIDError is the error of a server whose SPIFFE ID is not the one
// the client requires (WithServerSPIFFEID).
type SPIFFEIDError struct{ Want, Got string }

func (e *SPIFFEIDError) Error() string {
	return fmt.Sprintf("trust: server SPIFFE ID is %q, want %q", truncate(e.Got, 200), truncate(e.Want, 200))
}

// spiffeBackoff is the Workload API retry schedule: spiffeRetryMin,
// doubling, at most spiffeRetryMax.
type spiffeBackoff struct{}

func (spiffeBackoff) NewBackoff() workloadapi.Backoff { return &doublingBackoff{} }

type doublingBackoff struct{ next time.Duration }

func (b *doublingBackoff) Next() time.Duration {
	if b.next == 0 {
		b.next = spiffeRetryMin
	}
	d := b.next
	b.next = min(b.next*2, spiffeRetryMax)
	return d
}

func (b *doublingBackoff) Reset() { b.next = 0 }
