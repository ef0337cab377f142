package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// What an operator sees of a running tunnel: tunnel status and the
// session close, session_id on every session and stream line, the metrics
// that exist from the start, log timestamps, the repeated expiry warning.

// holdStream opens a connection through the forward at addr to an echo
// backend, moves n bytes each way and keeps it open until the test ends.
func holdStream(t *testing.T, addr string, n int) {
	t.Helper()
	c := dialLocal(t, addr)
	c.SetDeadline(time.Now().Add(waitTimeout))
	go func() { _, _ = c.Write(make([]byte, n)) }()
	if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
		t.Fatalf("echo of %d bytes: %v", n, err)
	}
	c.SetDeadline(time.Time{})
}

// statusJSON runs tunnel status --json against admin and decodes it.
func statusJSON(t *testing.T, admin string, extra ...string) map[string]any {
	t.Helper()
	out, stderr, code := runTunnel(t, append([]string{"status", "--admin", admin, "--json"}, extra...)...)
	if code != 0 {
		t.Fatalf("tunnel status --json: exit %d\n%s", code, stderr)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("tunnel status --json: %v\n%s", err, out)
	}
	return st
}

func list(v any) []map[string]any {
	var out []map[string]any
	for _, x := range v.([]any) {
		out = append(out, x.(map[string]any))
	}
	return out
}

// TestStatusCommandAndClose: tunnel status shows the server's live session
// (id, identity, address, streams, bytes each way), its routes with their
// streams, the CRL file's age, the certificates' expiry and the last
// reload; the client's shows its session and forwards. Every session and
// stream line of both roles carries the session_id that status shows, and
// --close ends that session (session_closed reason admin_close); the
// client reconnects, which tunnel_client_reconnects_total counts. With a
// token, status needs it.
func TestStatusCommandAndClose(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	mustTunnel(t, "cert", "crl", pk.dir)
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("s3cret-admin-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startProc(t, append(serverArgs(pk, "127.0.0.1:0", "echo="+echoBackend(t), "down=127.0.0.1:1"),
		"--admin", "127.0.0.1:0", "--admin-token-file", token, "--crl", filepath.Join(pk.dir, "crl.pem"))...)
	sadmin := srv.adminAddr(t)
	cli := startProc(t, append(clientArgs(pk, srv.addr(t), "echo"), "--admin", "127.0.0.1:0")...)
	cadmin := cli.adminAddr(t)
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	fwd := cli.forwardAddr(t, "echo")
	echoCheck(t, fwd, 21, 100<<10) // one stream done
	holdStream(t, fwd, 7000)       // one stream open
	srv.signal(t, syscall.SIGHUP)
	srv.waitEvent(t, waitTimeout, "reload_applied", isEvent("reload_applied"))

	// Without the token the listener refuses, and status says what to give.
	_, stderr, code := runTunnel(t, "status", "--admin", sadmin)
	if code != 1 || !strings.Contains(stderr, "401") || !strings.Contains(stderr, "--token-file") {
		t.Errorf("status without the token: exit %d, %q; want 1, 401 and a hint about --token-file", code, stderr)
	}

	var st map[string]any
	var sess map[string]any
	deadline := time.Now().Add(waitTimeout)
	for {
		st = statusJSON(t, sadmin, "--token-file", token)
		if ss := list(st["sessions"]); len(ss) == 1 && ss[0]["bytes_in"] == float64(100<<10+7000) && ss[0]["bytes_out"] == float64(100<<10+7000) {
			sess = ss[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status sessions: %v, want one with %d bytes each way", st["sessions"], 100<<10+7000)
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
	id, _ := sess["id"].(string)
	ident := sess["identity"].(map[string]any)
	if len(id) != 8 || ident["cn"] != "app1" || sess["streams"] != float64(1) || sess["streams_total"] != float64(2) || !strings.HasPrefix(sess["addr"].(string), "127.0.0.1:") {
		t.Errorf("status session %v", sess)
	}
	if _, err := time.Parse(time.RFC3339Nano, sess["since"].(string)); err != nil {
		t.Errorf("since %v: %v", sess["since"], err)
	}
	routes := list(st["routes"])
	if len(routes) != 2 || routes[1]["name"] != "echo" || routes[1]["streams"] != float64(1) || routes[1]["streams_total"] != float64(1) ||
		routes[1]["bytes_in"] != float64(100<<10) || routes[0]["name"] != "down" || routes[0]["streams"] != float64(0) {
		t.Errorf("status routes %v", routes)
	}
	rev := list(st["revocation"])
	if len(rev) != 1 || rev[0]["kind"] != "crl_file" || !strings.HasPrefix(rev[0]["issuer"].(string), "CN=tunnel dev CA") || rev[0]["usable"] != true {
		t.Errorf("status revocation %v, want the CRL file with its issuer", rev)
	}
	certs := list(st["certificates"])
	if len(certs) != 2 || certs[0]["kind"] != "leaf" || certs[1]["kind"] != "ca" || certs[0]["expires_in_seconds"].(float64) < 800*86400 {
		t.Errorf("status certificates %v", certs)
	}
	if last := st["reload"].(map[string]any)["last"].(map[string]any); last["trigger"] != "sighup" || last["result"] != "applied" {
		t.Errorf("status reload %v", st["reload"])
	}

	out, stderr, code := runTunnel(t, "status", "--admin", sadmin, "--token-file", token)
	for _, want := range []string{"tunnel server", "sessions: 1", id, "app1", "routes: 2", "echo", "crl_file", "certificates: 2", "leaf", "reloads: 1 applied"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("tunnel status: exit %d, lacks %q:\n%s%s", code, want, out, stderr)
		}
	}
	t.Logf("tunnel status (server):\n%s", out)

	cst := statusJSON(t, cadmin)
	cs := cst["session"].(map[string]any)
	fw := list(cst["forwards"])
	if cs["state"] != "up" || len(fw) != 1 || fw[0]["route"] != "echo" || fw[0]["streams"] != float64(1) || fw[0]["session"] != "up" {
		t.Errorf("client status session %v forwards %v", cs, fw)
	}
	clientID, _ := cs["id"].(string)
	if out, _, _ := runTunnel(t, "status", "--admin", cadmin); !strings.Contains(out, "session: up to") || !strings.Contains(out, "forwards: 1") {
		t.Errorf("tunnel status (client):\n%s", out)
	}

	// One session's lines, on both roles, are found by its session_id.
	for _, ev := range []string{"session_opened", "stream_closed"} {
		if len(srv.matching(isEvent(ev, "session_id", id))) == 0 {
			t.Errorf("server: no %s with session_id %s", ev, id)
		}
		if len(cli.matching(isEvent(ev, "session_id", clientID))) == 0 {
			t.Errorf("client: no %s with session_id %s", ev, clientID)
		}
	}

	_, stderr, code = runTunnel(t, "status", "--admin", sadmin, "--token-file", token, "--close", "ffffffff")
	if code != 1 || !strings.Contains(stderr, "404") {
		t.Errorf("--close of no session: exit %d, %q; want 1 and 404", code, stderr)
	}
	out, stderr, code = runTunnel(t, "status", "--admin", sadmin, "--token-file", token, "--close", id)
	if code != 0 || !strings.Contains(out, "closed session "+id) {
		t.Fatalf("--close %s: exit %d, %q %q", id, code, out, stderr)
	}
	srv.waitEvent(t, waitTimeout, "session_closed admin_close", isEvent("session_closed", "reason", "admin_close", "session_id", id))
	srv.waitEvent(t, waitTimeout, "admin_request", isEvent("admin_request", "session_id", id))
	cli.waitEventN(t, waitTimeout, 2, "a second session_opened", isEvent("session_opened"))
	waitMetrics(t, "http://"+cadmin, "tunnel_client_reconnects_total 1")
	echoCheck(t, fwd, 22, 64<<10)
}

// TestMetricsFromZero: before any traffic or reload, the series an operator
// alerts on already exist: each configured route's, every CRL store cap,
// both reload results' last time (0), the build, and each certificate's
// notAfter; the CRL age is labelled by the CA, not by a URL. A reload sets
// its timestamp.
func TestMetricsFromZero(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	mustTunnel(t, "cert", "crl", pk.dir)
	srv := startProc(t, append(serverArgs(pk, "127.0.0.1:0", "echo="+echoBackend(t), "db=127.0.0.1:1"),
		"--admin", "127.0.0.1:0", "--crl", filepath.Join(pk.dir, "crl.pem"))...)
	admin := "http://" + srv.adminAddr(t)
	leaf := readCert(t, pk.serverCert)
	ca := readCert(t, pk.ca)
	waitMetrics(t, admin,
		`tunnel_route_streams_total{route="db"} 0`, `tunnel_route_streams_total{route="echo"} 0`,
		`tunnel_route_bytes_total{direction="in",route="db"} 0`, `tunnel_route_bytes_total{direction="out",route="echo"} 0`,
		`tunnel_crl_limit_hits_total{limit="new_urls_per_minute"} 0`, `tunnel_crl_limit_hits_total{limit="cached_crls"} 0`,
		`tunnel_crl_limit_hits_total{limit="seen_urls"} 0`,
		`tunnel_last_reload_timestamp_seconds{result="applied"} 0`, `tunnel_last_reload_timestamp_seconds{result="rejected"} 0`,
		`tunnel_reloads_total{result="rejected"} 0`,
		`tunnel_build_info{commit="`, `goversion="go`,
		fmt.Sprintf(`tunnel_certificate_not_after_timestamp_seconds{kind="leaf",role="server",serial="%s",subject="CN=tunnel-srv"} %s`,
			leaf.SerialNumber.Text(16), promFloat(leaf.NotAfter.Unix())),
		fmt.Sprintf(`tunnel_certificate_not_after_timestamp_seconds{kind="ca",role="server",serial="%s",subject="%s"} %s`,
			ca.SerialNumber.Text(16), ca.Subject.String(), promFloat(ca.NotAfter.Unix())),
		fmt.Sprintf(`tunnel_crl_age_seconds{issuer="%s"}`, ca.Subject.String()))
	_, body := httpDo(t, "GET", admin+"/metrics")
	if strings.Contains(body, `tunnel_crl_age_seconds{source=`) {
		t.Error("tunnel_crl_age_seconds still has a source label")
	}
	srv.signal(t, syscall.SIGHUP)
	srv.waitEvent(t, waitTimeout, "reload_applied", isEvent("reload_applied"))
	deadline := time.Now().Add(waitTimeout)
	for {
		_, body := httpDo(t, "GET", admin+"/metrics")
		m := regexp.MustCompile(`tunnel_last_reload_timestamp_seconds\{result="applied"\} (\S+)`).FindStringSubmatch(body)
		if m != nil {
			if v, _ := strconv.ParseFloat(m[1], 64); v > 0 {
				if d := time.Since(time.Unix(int64(v), 0)); d < 0 || d > time.Minute {
					t.Errorf("last applied reload at %v, %v ago", m[1], d)
				}
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no last applied reload timestamp after SIGHUP: %v", m)
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}

	cli := startProc(t, append(clientArgs(pk, srv.addr(t), "echo"), "--admin", "127.0.0.1:0")...)
	cli.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened"))
	waitMetrics(t, "http://"+cli.adminAddr(t), "tunnel_client_reconnects_total 0", `kind="leaf",role="client"`)
}

// promFloat writes a Unix time as the Prometheus text format does.
func promFloat(sec int64) string {
	return strconv.FormatFloat(float64(sec), 'g', -1, 64)
}

// stampRE is a log timestamp: RFC 3339 with all nine digits of nanoseconds.
var stampRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}(Z|[+-]\d\d:\d\d)$`)

// TestLogTimestamps: every line, text or JSON, carries an RFC 3339 time
// with nanoseconds, and lines of one burst keep their order by it.
func TestLogTimestamps(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	srv := startProc(t, serverArgs(pk, "127.0.0.1:0", "echo="+echoBackend(t))...)
	srv.addr(t)
	evs := srv.matching(func(map[string]any) bool { return true })
	var prev time.Time
	for _, ev := range evs {
		s, _ := ev["time"].(string)
		if !stampRE.MatchString(s) {
			t.Fatalf("JSON time %q is not RFC 3339 with nanoseconds: %v", s, ev)
		}
		ts, _ := time.Parse(time.RFC3339Nano, s)
		if ts.Before(prev) {
			t.Errorf("time %v before the previous line's %v", ts, prev)
		}
		prev = ts
	}
	text := startProc(t, withFlag(serverArgs(pk, "127.0.0.1:0", "echo=127.0.0.1:1"), "--log-format", "text")...)
	re := regexp.MustCompile(`^time="([^"]+)" level=`)
	deadline := time.Now().Add(waitTimeout)
	for {
		text.mu.Lock()
		lines := append([]string(nil), text.lines...)
		text.mu.Unlock()
		if len(lines) >= 3 {
			for _, l := range lines {
				m := re.FindStringSubmatch(l)
				if m == nil || !stampRE.MatchString(m[1]) {
					t.Fatalf("text line without an RFC 3339 nanosecond time: %q", l)
				}
			}
			t.Logf("text: %s", lines[0])
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d text lines", len(lines))
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

// TestCertExpiringRepeats: a server whose certificate expires within 7
// days warns (cert_expiring) at start-up and again each period while it
// runs (the test build shortens the day to a second), and stops once a
// reload brings a certificate that does not.
func TestCertExpiringRepeats(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "srv.pem"), filepath.Join(dir, "srv-key.pem")
	short, shortKey := pk.issue(t, "--server", "short-srv", "--ip", "127.0.0.1", "--dns", "localhost", "--days", "3")
	copyFile(t, short, cert)
	copyFile(t, shortKey, key)
	args := withFlag(withFlag(serverArgs(pk, "127.0.0.1:0", "echo=127.0.0.1:1"), "--cert", cert), "--key", key)
	srv := startProcEnv(t, []string{"TUNNEL_TEST_CERT_WARN_EVERY=1s"}, args...)
	evs := srv.waitEventN(t, waitTimeout, 3, "three cert_expiring lines", isEvent("cert_expiring"))
	var at []time.Time
	for _, ev := range evs {
		ts, _ := time.Parse(time.RFC3339Nano, ev["time"].(string))
		at = append(at, ts)
		if s, _ := ev["expires_in_s"].(float64); s <= 2*86400 || s > 3*86400 {
			t.Errorf("cert_expiring expires_in_s %v, want about 3 days", ev["expires_in_s"])
		}
	}
	if gap := at[2].Sub(at[1]); gap < 900*time.Millisecond {
		t.Errorf("warnings %v apart, want one per period (1s in the test build)", gap)
	}
	t.Logf("cert_expiring at start and then every %v, %v", at[1].Sub(at[0]).Round(10*time.Millisecond), at[2].Sub(at[1]).Round(10*time.Millisecond))

	renameInto(t, cert, readFile(t, pk.serverCert))
	renameInto(t, key, readFile(t, pk.serverKey))
	srv.signal(t, syscall.SIGHUP)
	srv.waitEvent(t, waitTimeout, "reload_applied", isEvent("reload_applied"))
	n := len(srv.matching(isEvent("cert_expiring")))
	time.Sleep(2500 * time.Millisecond)                            // two and a half periods
	if m := len(srv.matching(isEvent("cert_expiring"))); m > n+1 { // one may have been on its way at the reload
		t.Errorf("%d cert_expiring lines after a reload brought a long-lived certificate", m-n)
	}
}

func readFile(t *testing.T, f string) []byte {
	t.Helper()
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	if err := os.WriteFile(to, readFile(t, from), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestStatusExposesAndPublications: the server's tunnel status lists each
// expose with its bound address and who publishes it (session id,
// identity, streams), and an expose nobody publishes as DOWN; the
// client's lists its publications, live or refused with the status.
func TestStatusExposesAndPublications(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)
	echo := echoBackend(t)
	srv := exposeServer(t, pk, nil, []string{exposeSpec("svc", []string{"cn:app1"}), exposeSpec("idle", []string{"cn:nobody"})},
		"--admin", "127.0.0.1:0")
	sadmin := srv.adminAddr(t)
	cli := startProc(t, append(publisherArgs(pk, srv.addr(t), pk.clientCert, pk.clientKey, "svc="+echo, "idle="+echo),
		"--admin", "127.0.0.1:0")...)
	cadmin := cli.adminAddr(t)
	cli.waitEvent(t, waitTimeout, "publish_added svc", isEvent("publish_added", "expose", "svc"))
	cli.waitEvent(t, waitTimeout, "publish_refused idle", isEvent("publish_refused", "expose", "idle", "status", "forbidden"))
	opened := srv.waitEvent(t, waitTimeout, "session_opened", isEvent("session_opened", "identity_cn", "app1"))
	svcAddr := srv.exposeAddr(t, "svc")
	holdStream(t, svcAddr, 5000) // one inbound connection open

	st := statusJSON(t, sadmin)
	xs := list(st["exposes"])
	if len(xs) != 2 || xs[0]["name"] != "svc" || xs[0]["listen"] != svcAddr || xs[0]["active"] != float64(1) || xs[1]["name"] != "idle" {
		t.Fatalf("status exposes %v", xs)
	}
	pubs := list(xs[0]["publishers"])
	if len(pubs) != 1 || pubs[0]["session_id"] != opened["session_id"] || pubs[0]["identity"].(map[string]any)["cn"] != "app1" ||
		pubs[0]["streams"] != float64(1) || pubs[0]["streams_total"] != float64(1) {
		t.Errorf("status publishers of svc %v, want the session %v with one stream", pubs, opened["session_id"])
	}
	if n := len(list(xs[1]["publishers"])); n != 0 {
		t.Errorf("idle has %d publishers", n)
	}
	out, _, code := runTunnel(t, "status", "--admin", sadmin)
	for _, want := range []string{"exposes: 2", "svc", svcAddr, "idle", "0 (DOWN)", "publishers: 1", opened["session_id"].(string), "app1"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("tunnel status (server) lacks %q:\n%s", want, out)
		}
	}
	t.Logf("tunnel status (server):\n%s", out)

	// The reverse stream counts on the client's session as a forward
	// stream would, bytes live each way.
	var cst map[string]any
	for deadline := time.Now().Add(waitTimeout); ; {
		cst = statusJSON(t, cadmin)
		if ss := list(cst["sessions"]); len(ss) == 1 && ss[0]["streams"] == float64(1) && ss[0]["bytes_in"] == float64(5000) && ss[0]["bytes_out"] == float64(5000) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("client status sessions %v, want one stream and 5000 bytes each way", cst["sessions"])
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
	csid := cst["session"].(map[string]any)["id"]
	if n := len(cli.matching(isEvent("stream_opened", "direction", "reverse", "session_id", fmt.Sprint(csid)))); n != 1 {
		t.Errorf("%d reverse stream_opened lines on the client with its session_id %v, want 1", n, csid)
	}
	cp := list(cst["publications"])
	if len(cp) != 2 || cp[0]["name"] != "idle" || cp[0]["state"] != "refused" || cp[0]["refused"] != "forbidden" ||
		cp[1]["name"] != "svc" || cp[1]["state"] != "live" || cp[1]["target"] != echo || cp[1]["streams"] != float64(1) {
		t.Errorf("client status publications %v", cp)
	}
	out, _, code = runTunnel(t, "status", "--admin", cadmin)
	for _, want := range []string{"publications: 2", "refused (forbidden)", "live"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("tunnel status (client) lacks %q:\n%s", want, out)
		}
	}
	t.Logf("tunnel status (client):\n%s", out)
}
