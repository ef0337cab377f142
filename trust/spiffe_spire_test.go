package trust_test

import (
	"context"
	"crypto/tls"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/spiretest"
	"github.com/tunnel-dev/tunnel/server"
	"github.com/tunnel-dev/tunnel/trust"
)

// The tests in this file run against a real SPIRE server and agent
// (internal/spiretest; binaries from scripts/spire/build.sh), and a real
// tunnel session between two workloads that hold X.509-SVIDs from the
// agent's Workload API. The two workloads are this test process: two
// registration entries match it, and each side picks its SVID by ID
// (SPIFFEConfig.ID), as two processes would each get their own.

// spiffeSource starts a SPIFFESource on agent for id; closed at the end.
func spiffeSource(t *testing.T, a *spiretest.Agent, id string) *trust.SPIFFESource {
	t.Helper()
	src, err := trust.NewSPIFFESource(context.Background(), trust.SPIFFEConfig{Addr: a.Addr, ID: id, StartTimeout: 60 * time.Second})
	if err != nil {
		t.Fatalf("%v\n%s", err, a.Log())
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// followStore keeps store on src's material until the test ends.
func followStore(t *testing.T, src trust.Source, store *trust.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { trust.Follow(ctx, src, store.Swap) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}

// spiffeClientTLS returns the client's per-dial TLS config: the server is
// known by its SPIFFE ID.
func spiffeClientTLS(store *trust.Store, serverID string) func() *tls.Config {
	id := spiffeid.RequireFromString(serverID)
	return func() *tls.Config {
		return trust.ClientConfig(store, "", []string{trust.ALPNTunnel}, trust.WithServerSPIFFEID(id))
	}
}

// waitUntil polls cond every 50 ms for up to d.
func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// A session between two SVID-holding workloads: the client knows the server
// by its SPIFFE ID, the server admits the client by spiffe-td, bytes arrive
// intact, the server logs the client's SPIFFE ID, and a client that expects
// another server ID is refused.
func TestSPIFFETunnelSession(t *testing.T) {
	t.Parallel() // each runs its own SPIRE; most of the time is waiting on TTLs
	srv := spiretest.StartServer(t, "a.test")
	agent := spiretest.StartAgent(t, srv)
	srv.CreateEntry(t, agent, spiretest.Entry{SPIFFEID: srv.ID("server")})
	srv.CreateEntry(t, agent, spiretest.Entry{SPIFFEID: srv.ID("client")})
	start := time.Now()
	srvSrc := spiffeSource(t, agent, srv.ID("server"))
	cliSrc := spiffeSource(t, agent, srv.ID("client"))
	t.Logf("both SVIDs from the Workload API %v after their entries were made", time.Since(start).Round(time.Millisecond))

	if st := srvSrc.Status(); st.State != trust.StateOK || !st.Ready() || st.Kind != trust.SourceSPIFFE || st.Where != agent.Addr {
		t.Errorf("server source status = %+v", st)
	}
	m := srvSrc.Material()
	if m.SPIFFE == nil || m.SPIFFE.ID.String() != srv.ID("server") || m.Certificate.Leaf.URIs[0].String() != srv.ID("server") {
		t.Fatalf("server material is not its SVID: %+v", m.SPIFFE)
	}

	rule, err := server.ParseIdentityRule("spiffe-td:a.test")
	if err != nil {
		t.Fatal(err)
	}
	ts := startTunnelServer(t, trust.NewStore(m), &server.Access{Name: "test", Identities: []server.IdentityRule{rule}})
	ts.follow(t, srvSrc)
	cliStore := trust.NewStore(cliSrc.Material())
	followStore(t, cliSrc, cliStore)
	tc := startTunnelClient(t, ts.addr, spiffeClientTLS(cliStore, srv.ID("server")))
	if err := waitRoundTrip(tc.local, 1<<20, 30*time.Second); err != nil {
		t.Fatalf("1 MiB through the tunnel: %v", err)
	}
	opened := events(ts.log, audit.SessionOpened)
	if len(opened) == 0 || !strings.Contains(opened[0].Data[audit.IdentitySANs].(string), "uri:"+srv.ID("client")) {
		t.Errorf("session_opened does not name the client's SPIFFE ID: %v", opened)
	}

	// The wrong server ID: refused by the client, with the reason named.
	wrong := trust.ClientConfig(cliStore, "", []string{trust.ALPNTunnel}, trust.WithServerSPIFFEID(spiffeid.RequireFromString(srv.ID("other"))))
	c, err := tls.Dial("tcp", ts.addr, wrong)
	if err == nil {
		c.Close()
		t.Fatal("a client that requires spiffe://a.test/other reached spiffe://a.test/server")
	}
	if r := trust.FailureReason(err); r != trust.ReasonSPIFFEIDMismatch {
		t.Errorf("wrong server ID: reason %q (%v), want %q", r, err, trust.ReasonSPIFFEIDMismatch)
	}
}

// An SVID rotation during a live transfer: with 20 s SVIDs the agent
// rotates both sides' SVIDs within about 15 s; the transfer that started
// before goes on through it with every byte intact, no session is closed,
// and the next handshake presents the new SVID.
func TestSPIFFERotationDuringTransfer(t *testing.T) {
	t.Parallel() // each runs its own SPIRE; most of the time is waiting on TTLs
	srv := spiretest.StartServer(t, "a.test")
	agent := spiretest.StartAgent(t, srv)
	srv.CreateEntry(t, agent, spiretest.Entry{SPIFFEID: srv.ID("server"), TTL: 20 * time.Second})
	srv.CreateEntry(t, agent, spiretest.Entry{SPIFFEID: srv.ID("client"), TTL: 20 * time.Second})
	srvSrc := spiffeSource(t, agent, srv.ID("server"))
	cliSrc := spiffeSource(t, agent, srv.ID("client"))
	srvFirst, cliFirst := srvSrc.Material().Certificate.Leaf, cliSrc.Material().Certificate.Leaf

	ts := startTunnelServer(t, trust.NewStore(srvSrc.Material()), nil)
	ts.follow(t, srvSrc)
	cliStore := trust.NewStore(cliSrc.Material())
	followStore(t, cliSrc, cliStore)
	tc := startTunnelClient(t, ts.addr, spiffeClientTLS(cliStore, srv.ID("server")))
	if err := waitRoundTrip(tc.local, 64<<10, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	live := startLive(t, tc.local)
	start := time.Now()
	rotated := waitUntil(60*time.Second, func() bool {
		return !srvSrc.Material().Certificate.Leaf.Equal(srvFirst) && !cliSrc.Material().Certificate.Leaf.Equal(cliFirst)
	})
	if !rotated {
		t.Fatalf("no rotation of both SVIDs within 60 s\n%s", agent.Log())
	}
	t.Logf("both SVIDs rotated %v into the transfer (TTL 20 s)", time.Since(start).Round(time.Millisecond))
	time.Sleep(time.Second) // keep the stream going across the swap
	n, intact, err := live.finish()
	if !intact || n == 0 {
		t.Fatalf("transfer across the rotation: %d bytes, SHA-256 intact %v, error %v", n, intact, err)
	}
	t.Logf("%d bytes echoed across the rotation, SHA-256 intact", n)
	if got := events(ts.log, audit.SessionClosed); len(got) > 0 {
		t.Errorf("a session was closed by the rotation: %v", got[0].Data)
	}

	// A new handshake sees the new SVID on both sides.
	c, err := tls.Dial("tcp", ts.addr, spiffeClientTLS(cliStore, srv.ID("server"))())
	if err != nil {
		t.Fatalf("handshake after rotation: %v", err)
	}
	defer c.Close()
	if peer := c.ConnectionState().PeerCertificates[0]; peer.Equal(srvFirst) || !peer.Equal(srvSrc.Material().Certificate.Leaf) {
		t.Error("the server still presents its first SVID after the rotation")
	}
	if st := srvSrc.Status(); st.Updates < 2 || st.State != trust.StateOK {
		t.Errorf("server source after rotation: %+v", st)
	}
}

// A workload whose entry is deleted loses access: the agent stops issuing
// it an SVID, the source says so (stale, with the error) and keeps the last
// one, and once that expires the server refuses its handshakes.
func TestSPIFFEEntryDeleted(t *testing.T) {
	t.Parallel() // each runs its own SPIRE; most of the time is waiting on TTLs
	srv := spiretest.StartServer(t, "a.test")
	agent := spiretest.StartAgent(t, srv)
	srv.CreateEntry(t, agent, spiretest.Entry{SPIFFEID: srv.ID("server")})
	cliEntry := srv.CreateEntry(t, agent, spiretest.Entry{SPIFFEID: srv.ID("client"), TTL: 15 * time.Second})
	srvSrc := spiffeSource(t, agent, srv.ID("server"))
	cliSrc := spiffeSource(t, agent, srv.ID("client"))
	ts := startTunnelServer(t, trust.NewStore(srvSrc.Material()), nil)
	ts.follow(t, srvSrc)
	cliStore := trust.NewStore(cliSrc.Material())
	followStore(t, cliSrc, cliStore)
	dial := spiffeClientTLS(cliStore, srv.ID("server"))
	if c, err := tls.Dial("tcp", ts.addr, dial()); err != nil {
		t.Fatalf("handshake before the deletion: %v", err)
	} else {
		c.Close()
	}

	srv.DeleteEntry(t, cliEntry)
	deleted := time.Now()
	if !waitUntil(30*time.Second, func() bool { return cliSrc.Status().State != trust.StateOK }) {
		t.Fatalf("the client source did not notice its entry's deletion: %+v", cliSrc.Status())
	}
	st := cliSrc.Status()
	t.Logf("client source %s %v after the deletion: %v", st.State, time.Since(deleted).Round(time.Millisecond), st.LastError)
	if st.State != trust.StateStale || st.LastError == nil || !strings.Contains(st.LastError.Error(), srv.ID("client")) {
		t.Errorf("client source status = %+v, want stale naming %s", st, srv.ID("client"))
	}
	last := cliSrc.Material().Certificate.Leaf
	if !waitUntil(time.Until(last.NotAfter)+5*time.Second, func() bool { return time.Now().After(last.NotAfter) }) {
		t.Fatal("clock did not pass the SVID's NotAfter")
	}
	if st := cliSrc.Status(); st.State != trust.StateExpired || st.Ready() {
		t.Errorf("client source after its SVID expired: %+v", st)
	}
	c, err := tls.Dial("tcp", ts.addr, dial())
	if err == nil {
		// TLS 1.3: the client finishes before the server's verdict arrives.
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil {
		t.Fatal("a workload whose entry was deleted still got in after its SVID expired")
	}
	if !waitEvent(ts.log, audit.HandshakeFailed, "expired_or_not_yet_valid", 10*time.Second) {
		t.Errorf("the server did not log handshake_failed expired_or_not_yet_valid")
	}
	t.Logf("refused %v after the deletion (SVID TTL 15 s)", time.Since(deleted).Round(time.Millisecond))
}

// A bundle without the peer's CA refuses it; federating brings the peer in
// on the next handshake; a bundle update that drops the peer's trust domain
// closes its live session (session_revoked, ca_removed) mid-transfer.
func TestSPIFFEFederatedBundles(t *testing.T) {
	t.Parallel()                               // each runs its own SPIRE; most of the time is waiting on TTLs
	srvA := spiretest.StartServer(t, "a.test") // the tunnel server's trust domain
	srvB := spiretest.StartServer(t, "b.test") // the tunnel client's
	agentA := spiretest.StartAgent(t, srvA)
	agentB := spiretest.StartAgent(t, srvB)
	// The client trusts a.test from the start; the server does not trust
	// b.test yet.
	srvB.SetFederatedBundle(t, srvA)
	srvB.CreateEntry(t, agentB, spiretest.Entry{SPIFFEID: srvB.ID("client"), FederatesWith: []string{"spiffe://a.test"}})
	serverEntry := srvA.CreateEntry(t, agentA, spiretest.Entry{SPIFFEID: srvA.ID("server")})
	srvSrc := spiffeSource(t, agentA, srvA.ID("server"))
	cliSrc := spiffeSource(t, agentB, srvB.ID("client"))
	if cliSrc.Material().SPIFFE.Bundles.Len() != 2 {
		t.Fatalf("the client has %d bundles, want its own and a.test's", cliSrc.Material().SPIFFE.Bundles.Len())
	}

	ts := startTunnelServer(t, trust.NewStore(srvSrc.Material()), nil)
	ts.follow(t, srvSrc)
	cliStore := trust.NewStore(cliSrc.Material())
	followStore(t, cliSrc, cliStore)
	dial := spiffeClientTLS(cliStore, srvA.ID("server"))
	if err := dialVerdict(ts.addr, dial()); err == nil {
		t.Fatal("the server admitted a b.test client without b.test's bundle")
	}
	if !waitEvent(ts.log, audit.HandshakeFailed, "unknown_authority", 10*time.Second) {
		t.Fatalf("no handshake_failed unknown_authority on the server")
	}

	// Federate: the server's workload gets b.test's bundle.
	srvA.SetFederatedBundle(t, srvB)
	srvA.UpdateEntry(t, agentA, serverEntry, spiretest.Entry{SPIFFEID: srvA.ID("server"), FederatesWith: []string{"spiffe://b.test"}})
	start := time.Now()
	if !waitUntil(30*time.Second, func() bool { return srvSrc.Material().SPIFFE.Bundles.Len() == 2 }) {
		t.Fatalf("the server source did not get b.test's bundle\n%s", agentA.Log())
	}
	t.Logf("federated bundle delivered %v after the entry update", time.Since(start).Round(time.Millisecond))
	tc := startTunnelClient(t, ts.addr, dial)
	if err := waitRoundTrip(tc.local, 256<<10, 30*time.Second); err != nil {
		t.Fatalf("after federation: %v", err)
	}

	// Drop b.test from the server's bundles during a live transfer.
	live := startLive(t, tc.local)
	time.Sleep(200 * time.Millisecond)
	srvA.DeleteFederatedBundle(t, "b.test")
	dropped := time.Now()
	if !waitEvent(ts.log, audit.SessionRevoked, server.ReasonCARemoved, 30*time.Second) {
		t.Fatalf("the session of the b.test client was not closed after b.test left the bundle\n%s", agentA.Log())
	}
	t.Logf("session closed (session_revoked ca_removed) %v after `spire-server bundle delete`", time.Since(dropped).Round(time.Millisecond))
	if n, intact, _ := live.finish(); intact {
		t.Errorf("the live transfer went on (%d bytes) after its peer's trust domain left the bundle", n)
	}
	if err := dialVerdict(ts.addr, dial()); err == nil {
		t.Error("the server admits the b.test client again after its bundle was removed")
	}
}

// The agent going away keeps the last SVID in use (stale, with the error)
// and its return brings the source back to ok, with no restart.
func TestSPIFFEAgentUnreachable(t *testing.T) {
	t.Parallel() // each runs its own SPIRE; most of the time is waiting on TTLs
	srv := spiretest.StartServer(t, "a.test")
	agent := spiretest.StartAgent(t, srv)
	srv.CreateEntry(t, agent, spiretest.Entry{SPIFFEID: srv.ID("server")})
	src := spiffeSource(t, agent, srv.ID("server"))
	before := src.Material()
	agent.Stop()
	stopped := time.Now()
	if !waitUntil(20*time.Second, func() bool { return src.Status().State == trust.StateStale }) {
		t.Fatalf("source did not go stale with the agent down: %+v", src.Status())
	}
	st := src.Status()
	t.Logf("stale %v after the agent stopped: %v", time.Since(stopped).Round(time.Millisecond), st.LastError)
	if src.Material() != before || !st.Ready() || st.Failures == 0 {
		t.Errorf("with the agent down: material changed %v, status %+v", src.Material() != before, st)
	}
	restarted := time.Now()
	agent.Restart(t)
	if !waitUntil(30*time.Second, func() bool { return src.Status().State == trust.StateOK }) {
		t.Fatalf("source did not recover after the agent came back: %+v\n%s", src.Status(), agent.Log())
	}
	t.Logf("ok again %v after the agent restarted", time.Since(restarted).Round(time.Millisecond))
}
