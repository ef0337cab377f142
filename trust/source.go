package trust

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Kinds of Source, in logs and as the bounded "source" label of metrics.
const (
	SourceFile   = "file"   // certificate, key and CA bundle from files (the key may be in a PKCS#11 token)
	SourceSPIFFE = "spiffe" // X.509-SVID, key and bundles from the SPIFFE Workload API
)

// States of a Source, in SourceStatus.State.
const (
	// StateOK: the material is current and the last update succeeded.
	StateOK = "ok"
	// StateStale: the last attempt to update failed (the SPIFFE agent is
	// unreachable, a file no longer loads), and the last good material,
	// whose certificate is still within its validity, is in use.
	StateStale = "stale"
	// StateExpired: the material in use holds a certificate past its
	// NotAfter, and nothing newer came; peers refuse it.
	StateExpired = "expired"
)

// A Source is where a role's TLS material comes from: its own certificate
// chain and key (a crypto.Signer, which may live in a token) and the CA
// bundles that verify the peer. Files are one Source (FileSource), the SPIFFE
// Workload API another (SPIFFESource). A Source never hands out material
// that failed to load: after a failure the last good material stays.
//
// The caller publishes material to handshakes through a Store: at start-up
// NewStore(src.Material()); then, on each value from Changes, it takes
// src.Material(), re-checks live sessions against it (a CA that left the
// bundle closes the sessions that went through it), and Swaps it in.
// Implementations are safe for concurrent use.
type Source interface {
	// Kind is SourceFile or SourceSPIFFE.
	Kind() string
	// Material returns the latest good material. It is never nil once the
	// constructor returned without error, and it is immutable.
	Material() *Material
	// Changes receives a value when Material has changed by itself (a
	// rotated SVID, a new bundle). Changes that happen before the value is
	// read coalesce into it. A Source that changes only when asked
	// (FileSource: the reload loop calls Reload) returns nil, which
	// blocks forever in a select.
	Changes() <-chan struct{}
	// Status reports the health of the source, for /readyz, metrics,
	// logs and `tunnel check`.
	Status() SourceStatus
	// Close stops the source's background work and waits for it.
	// Material stays valid; Changes receives nothing more.
	Close() error
}

// SourceStatus is a snapshot of a Source's health. It is a plain value.
type SourceStatus struct {
	Kind  string // SourceFile or SourceSPIFFE
	State string // StateOK, StateStale or StateExpired
	// Where names what the source reads from: the certificate file, or
	// the Workload API address.
	Where string
	// Updated is when the material in use was taken in; Age is
	// time.Since(Updated) at the call.
	Updated time.Time
	Age     time.Duration
	// NotAfter is the expiry of the certificate in use.
	NotAfter time.Time
	// Updates counts the material taken in (the first load included);
	// Failures counts failed attempts (a refused load, a Workload API
	// error or an update that did not verify).
	Updates, Failures uint64
	// LastError is the most recent failure and when it happened; it is
	// cleared by the next success.
	LastError   error
	LastErrorAt time.Time
}

// Ready reports whether the role can serve with this material: it has some
// and its certificate has not expired (StateOK or StateStale). A stale source
// still serves; /readyz names it so an operator sees the agent or file
// problem before the certificate runs out.
func (s SourceStatus) Ready() bool { return s.State == StateOK || s.State == StateStale }

// sourceState is what FileSource and SPIFFESource share: the current
// material, the counters and the change signal.
type sourceState struct {
	kind, where string
	cur         atomic.Pointer[Material]
	changes     chan struct{} // capacity 1; nil for a source that changes only when asked

	mu        sync.Mutex
	updated   time.Time // guarded by mu
	updates   uint64    // guarded by mu
	failures  uint64    // guarded by mu
	lastErr   error     // guarded by mu
	lastErrAt time.Time // guarded by mu
	now       func() time.Time
}

func newSourceState(kind, where string, signals bool) *sourceState {
	s := &sourceState{kind: kind, where: where, now: time.Now}
	if signals {
		s.changes = make(chan struct{}, 1)
	}
	return s
}

// take publishes m as the current material, clears the error and signals
// a change (except for the first material, which the constructor returns).
func (s *sourceState) take(m *Material) {
	first := s.cur.Swap(m) == nil
	s.mu.Lock()
	s.updated = s.now()
	s.updates++
	s.lastErr, s.lastErrAt = nil, time.Time{}
	s.mu.Unlock()
	if !first && s.changes != nil {
		select {
		case s.changes <- struct{}{}:
		default:
		}
	}
}

// fail records a failed attempt; the current material stays.
func (s *sourceState) fail(err error) {
	s.mu.Lock()
	s.failures++
	s.lastErr, s.lastErrAt = err, s.now()
	s.mu.Unlock()
}

func (s *sourceState) status() SourceStatus {
	now := s.now()
	s.mu.Lock()
	st := SourceStatus{Kind: s.kind, Where: s.where, Updated: s.updated, Updates: s.updates, Failures: s.failures,
		LastError: s.lastErr, LastErrorAt: s.lastErrAt}
	s.mu.Unlock()
	m := s.cur.Load()
	switch {
	case m == nil || m.Certificate.Leaf == nil:
		st.State = StateExpired
		if st.LastError == nil {
			st.LastError = errNoMaterial
		}
	case !now.Before(m.Certificate.Leaf.NotAfter):
		st.State, st.NotAfter = StateExpired, m.Certificate.Leaf.NotAfter
	case st.LastError != nil:
		st.State, st.NotAfter = StateStale, m.Certificate.Leaf.NotAfter
	default:
		st.State, st.NotAfter = StateOK, m.Certificate.Leaf.NotAfter
	}
	if !st.Updated.IsZero() {
		st.Age = now.Sub(st.Updated)
	}
	return st
}

// FileSource is the Source of material read from files: Sources names them
// and Load reads them, exactly as before Source existed. Its key may be a
// PKCS#11 URI instead of a file (see Load). It changes only when Reload is
// called: the reload loop, which watches the files (and SIGHUP), decides
// when; Changes is nil. Safe for concurrent use.
type FileSource struct {
	st  *sourceState
	src Sources
}

// NewFileSource loads src with Load and returns a FileSource holding the
// result, or Load's error.
func NewFileSource(src Sources) (*FileSource, error) {
	m, err := Load(src)
	if err != nil {
		return nil, err
	}
	f := &FileSource{st: newSourceState(SourceFile, src.CertFile, false), src: src}
	f.st.take(m)
	return f, nil
}

// FileSourceOf returns a FileSource holding m, which Load(src) returned:
// for a caller that loads the files itself, with the rest of its
// configuration, and reports each later load with Record.
func FileSourceOf(src Sources, m *Material) *FileSource {
	f := &FileSource{st: newSourceState(SourceFile, src.CertFile, false), src: src}
	f.st.take(m)
	return f
}

// Record takes in the outcome of a load of the files that the caller made
// (a reload loads them with the rest of the configuration): m, now in use,
// if err is nil; otherwise the failure, counted and shown by Status, while
// the last material stays.
func (f *FileSource) Record(m *Material, err error) {
	if err != nil {
		f.st.fail(err)
		return
	}
	f.st.take(m)
}

// Reload reads the files again. On success the new material is current and
// returned; on error the old one stays, the failure is counted and shown by
// Status, and the error is Load's.
func (f *FileSource) Reload() (*Material, error) {
	m, err := Load(f.src)
	if err != nil {
		f.st.fail(err)
		return nil, err
	}
	f.st.take(m)
	return m, nil
}

// Kind returns SourceFile.
func (f *FileSource) Kind() string { return SourceFile }

// Material returns the last material that loaded.
func (f *FileSource) Material() *Material { return f.st.cur.Load() }

// Changes returns nil: file changes reach the process through the reload
// loop, which calls Reload.
func (f *FileSource) Changes() <-chan struct{} { return nil }

// Status reports the last load's outcome and the certificate's expiry.
func (f *FileSource) Status() SourceStatus { return f.st.status() }

// Close does nothing; a FileSource runs nothing in the background.
func (f *FileSource) Close() error { return nil }

// Follow calls apply with src's material after each change, one call at a
// time, until ctx ends; then it returns. apply typically re-checks live
// sessions against the new material (server.TrustCheck closes those whose
// CA left the bundle) and Swaps it into the role's Store. A Source whose
// Changes is nil makes Follow wait for ctx alone.
func Follow(ctx context.Context, src Source, apply func(*Material)) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-src.Changes():
			apply(src.Material())
		}
	}
}
