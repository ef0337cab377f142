package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/admin"
	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/trust"
)

// The identity of a running role: where its TLS material comes from (the
// files, or the SPIFFE Workload API; docs/IDENTITY.md), how a live source's
// changes reach the role, and the server's OCSP stapler.

// identity is a role's identity source and its stapler. The driver opens it
// before the role and closes it after.
type identity struct {
	src     trust.Source
	file    *trust.FileSource   // src when the material comes from files, else nil
	spiffe  *trust.SPIFFESource // src when it comes from the Workload API, else nil
	stapler *trust.Stapler      // the server's, with --ocsp-staple or --ocsp-staple-file; else nil
	closed  atomic.Uint64       // live sessions the source's updates closed
}

// settingError is a problem of one setting that the driver finds, printed by
// a start as one line (exit 2) and listed by `tunnel check`.
type settingError struct{ p config.Problem }

func (e *settingError) Error() string { return e.p.String() }

// problemOf is err as the problem `tunnel check` lists.
func problemOf(s *config.Settings, err error) config.Problem {
	if se, ok := errors.AsType[*settingError](err); ok {
		return se.p
	}
	return s.Values.Problem(err)
}

// openIdentity opens the identity source of s: the files s loaded, or the
// SPIFFE Workload API, which it waits for up to s.SPIFFE.StartTimeout (or
// ctx) for a first X.509-SVID. It returns the source and s with its
// material. The error names the setting at fault.
func openIdentity(ctx context.Context, s *config.Settings, log *logrus.Entry) (*identity, *config.Settings, error) {
	if s.SPIFFE == nil {
		f := trust.FileSourceOf(s.TLS, s.Material)
		return &identity{src: f, file: f}, s, nil
	}
	cfg := *s.SPIFFE
	cfg.Log = log
	src, err := trust.NewSPIFFESource(ctx, cfg)
	if err != nil {
		return nil, nil, spiffeError(s, err)
	}
	return &identity{src: src, spiffe: src}, s.WithMaterial(src.Material()), nil
}

// spiffeError names the setting a Workload API error is about: the socket
// setting, or SPIFFE_ENDPOINT_SOCKET when that is where the address came from.
func spiffeError(s *config.Settings, err error) error {
	if vals := s.Values.Get("spiffe.socket"); len(vals) == 0 || vals[0] == "" {
		return &settingError{config.Problem{Key: config.EnvSPIFFEEndpointSocket, Msg: err.Error()}}
	}
	return &settingError{s.Values.Problem(err)}
}

// checkStaple checks --ocsp-staple against the server's material without
// sending anything: the certificate names an OCSP responder, and the
// fetcher would ask it.
func checkStaple(s *config.Settings) error {
	if s.Server == nil || !s.Server.OCSPStaple {
		return nil
	}
	leaf := s.Material.Certificate.Leaf
	if len(leaf.OCSPServer) == 0 {
		return &settingError{s.Values.At("ocsp.staple", "%v: give %s instead", trust.ErrNoResponder, s.Values.Flag("ocsp.staple_file"))}
	}
	if _, err := trust.CheckFetchURL(leaf.OCSPServer[0], s.Revocation.FetchOptions); err != nil {
		return &settingError{s.Values.At("ocsp.staple", "the certificate's OCSP responder would never be asked: %v", err)}
	}
	return nil
}

// newStapler makes the server's stapler for s over store. With a responder
// to fetch from, the first fetch waits up to the revocation bootstrap
// timeout; a responder that cannot be reached is no error (the stapler
// retries), a staple file that does not load is.
func newStapler(ctx context.Context, s *config.Settings, store *trust.Store, log *logrus.Entry) (*trust.Stapler, error) {
	ctx, cancel := context.WithTimeout(ctx, s.Revocation.BootstrapTimeout)
	defer cancel()
	cfg := trust.StaplerConfig{Store: store, File: s.Server.OCSPStapleFile, FetchOptions: s.Revocation.FetchOptions, GET: s.Revocation.OCSPGET}
	if log != nil {
		cfg.Log = log
	}
	st, err := trust.NewStapler(ctx, cfg)
	if err != nil {
		key := "ocsp.staple"
		if cfg.File != "" {
			key = "ocsp.staple_file"
		}
		return nil, &settingError{s.Values.At(key, "%v", err)}
	}
	return st, nil
}

// openStapler starts the server's stapler, if s asks for one, over store.
func (id *identity) openStapler(ctx context.Context, s *config.Settings, store *trust.Store, log *logrus.Entry) error {
	if s.Server == nil || !s.Server.OCSPStaple && s.Server.OCSPStapleFile == "" {
		return nil
	}
	if err := checkStaple(s); err != nil {
		return err
	}
	st, err := newStapler(ctx, s, store, log)
	if err != nil {
		return err
	}
	st.Start()
	id.stapler = st
	return nil
}

// checkIdentity is `tunnel check`'s look at the identity sources of s: the
// Workload API answers with an SVID within the start timeout, the
// certificate's responder would be asked for a staple (checkStaple), a
// staple file loads. It returns s with the material the
// role would start with, or the problems.
func checkIdentity(ctx context.Context, s *config.Settings) (*config.Settings, []config.Problem) {
	if s.SPIFFE != nil {
		id, withM, err := openIdentity(ctx, s, quietLog())
		if err != nil {
			return nil, []config.Problem{problemOf(s, err)}
		}
		id.close()
		s = withM
	}
	if err := checkStaple(s); err != nil {
		return s, []config.Problem{problemOf(s, err)}
	}
	if s.Server != nil && s.Server.OCSPStapleFile != "" {
		// The file parses, verifies against the certificate and says good.
		st, err := newStapler(ctx, s, trust.NewStore(s.Material), nil)
		if err != nil {
			return s, []config.Problem{problemOf(s, err)}
		}
		st.Close()
	}
	return s, nil
}

// follow applies the material of each change of a live source (a rotated
// SVID, a new bundle) with apply, one at a time, until the returned stop is
// called; stop waits for the apply in progress. Files change through the
// reload loop instead.
func (id *identity) follow(ctx context.Context, apply func(context.Context, *trust.Material)) (stop func()) {
	if id.spiffe == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { trust.Follow(ctx, id.src, func(m *trust.Material) { apply(ctx, m) }) })
	return func() {
		cancel()
		wg.Wait()
	}
}

// same refuses a reload to settings whose identity source is of another
// kind than the running one's: the running source stays until a restart.
func (id *identity) same(next *config.Settings) error {
	if (next.SPIFFE != nil) == (id.spiffe != nil) {
		return nil
	}
	from, to := "the files", "the SPIFFE Workload API"
	if id.spiffe != nil {
		from, to = to, from
	}
	return fmt.Errorf("the identity source changed from %s to %s: that takes a restart", from, to)
}

// material returns next with the material the running source holds for it:
// the files next loaded, or the Workload API's current material.
func (id *identity) material(next *config.Settings) *config.Settings {
	if id.spiffe != nil {
		return next.WithMaterial(id.spiffe.Material())
	}
	return next
}

// reloaded takes in a reload applied with next: the file source records
// the material, and the stapler renews (a new certificate, or a staple file
// that changed).
func (id *identity) reloaded(next *config.Settings) {
	if id.file != nil {
		id.file.Record(next.Material, nil)
	}
	if id.stapler != nil {
		id.stapler.Refresh()
	}
}

// rejected takes in a reload whose settings had problems: one with the TLS
// files counts as a failed update of the file source.
func (id *identity) rejected(v *config.Values, probs []config.Problem) {
	if id.file == nil {
		return
	}
	for _, p := range probs {
		for _, k := range []string{"tls.cert", "tls.key", "tls.ca", "crl.files"} {
			if p.Key == v.Where(k) {
				id.file.Record(nil, errors.New(p.String()))
				return
			}
		}
	}
}

// ready is the identity's part of /readyz: an error once the material in
// use has expired (peers refuse it).
func (id *identity) ready() error {
	st := id.src.Status()
	if st.Ready() {
		return nil
	}
	msg := fmt.Sprintf("identity source %s (%s) is %s", st.Kind, st.Where, st.State)
	if !st.NotAfter.IsZero() {
		msg += ": the certificate in use expired at " + st.NotAfter.UTC().Format(time.RFC3339)
	}
	if st.LastError != nil {
		msg += "; last error: " + st.LastError.Error()
	}
	return errors.New(msg)
}

// notes are the identity's lines of /readyz that need attention but do not
// stop the role: a stale source, a stapler with no staple.
func (id *identity) notes() []string {
	var out []string
	if st := id.src.Status(); st.State == trust.StateStale {
		out = append(out, fmt.Sprintf("identity source %s (%s) is stale since %s: %v; the last material serves until %s",
			st.Kind, st.Where, st.LastErrorAt.UTC().Format(time.RFC3339), st.LastError, st.NotAfter.UTC().Format(time.RFC3339)))
	}
	if id.stapler != nil {
		if st := id.stapler.Status(); !st.Have {
			n := "ocsp staple: none stapled"
			if st.Source != "" {
				n += " (" + st.Source + ")"
			}
			if st.LastError != nil {
				n += ": " + st.LastError.Error()
			}
			out = append(out, n)
		}
	}
	return out
}

// collectors are the identity's metrics.
func (id *identity) collectors() []prometheus.Collector {
	out := []prometheus.Collector{admin.IdentityCollector(id.src, id.closed.Load)}
	if id.stapler != nil {
		out = append(out, admin.StapleCollector(id.stapler))
	}
	return out
}

// close stops the stapler and the source.
func (id *identity) close() {
	if id.stapler != nil {
		id.stapler.Close()
	}
	if id.spiffe != nil {
		id.spiffe.Close()
	}
}

// identityChanged applies the material of a live source's change to the
// running role, with the rest of the settings last applied: the server
// closes the sessions whose CA left the bundle (server.Reload), the next
// handshake of either role presents the new SVID. One at a time with
// reloads.
func (rl *reloader) identityChanged(ctx context.Context, m *trust.Material) {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	next := rl.current.WithMaterial(m)
	closed, err := rl.run.swapMaterial(ctx, next)
	if err != nil {
		if ctx.Err() == nil {
			rl.log.WithFields(logrus.Fields{audit.Event: audit.IdentityApplied, audit.Error: err.Error()}).Error("the identity source's new material could not be applied")
		}
		return
	}
	rl.current = next
	rl.id.closed.Add(uint64(closed))
	fields := trust.IdentityOf(m.Certificate.Leaf).Fields()
	fields[audit.Event] = audit.IdentityApplied
	fields[audit.Source] = rl.id.src.Kind()
	fields[audit.SessionsClosed] = closed
	fields["not_after"] = m.Certificate.Leaf.NotAfter.UTC().Format(time.RFC3339)
	if closed > 0 {
		rl.log.WithFields(fields).Warn("identity update applied: sessions whose CA left the trust bundle were closed")
		return
	}
	rl.log.WithFields(fields).Info("identity update applied")
}

// swapMaterial applies next's material to the running server: Reload with
// the routes and allowlist in use.
func (r *serverRun) swapMaterial(_ context.Context, next *config.Settings) (int, error) {
	return r.srv.Reload(next.ServerState())
}

// swapMaterial applies next's material to the running client: the next
// dial presents it; live sessions stay.
func (r *clientRun) swapMaterial(ctx context.Context, next *config.Settings) (int, error) {
	return 0, r.cl.Reload(ctx, next.ClientState())
}

// trustOptions are the TLS options of s beyond revocation: the server's
// stapler; the client's server SPIFFE ID and staple requirement.
func trustOptions(s *config.Settings, st *trust.Stapler) []trust.ConfigOption {
	var opts []trust.ConfigOption
	if st != nil {
		opts = append(opts, trust.WithStapler(st))
	}
	if c := s.Client; c != nil {
		if !c.ServerSPIFFEID.IsZero() {
			opts = append(opts, trust.WithServerSPIFFEID(c.ServerSPIFFEID))
		}
		if c.RequireOCSPStaple {
			opts = append(opts, trust.WithRequireOCSPStaple())
		}
	}
	return slices.Clip(opts)
}
