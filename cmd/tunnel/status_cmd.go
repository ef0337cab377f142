package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tunnel-dev/tunnel/admin"
)

// statusCommand is `tunnel status`: what a running server or client is
// doing, read from its admin listener's GET /status; --close ends one
// session (POST /sessions/ID/close).
func statusCommand(stdout io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show what a running server or client is doing, from its admin listener; --close ends a session",
		Description: `Reads GET /status from the admin listener of a running tunnel (its
   --admin address) and prints its live sessions (id, peer identity and
   address, since when, streams, bytes each way), the server's routes with
   their streams or the client's forwards and session state, each CRL and
   OCSP source with its age and next refresh, the expiry of every loaded
   certificate, and the last reload. --json prints the document as the
   endpoint serves it, for scripts. --close ID closes the session whose
   session_id is ID (its log lines carry it) and logs session_closing and
   session_closed (reason admin_close); the client may reconnect, so revoke
   its certificate or change the allowlist to keep it out.

   The admin listener answers only on loopback unless --admin-allow-remote,
   and wants the bearer token of --admin-token-file when one is set: give the
   same file with --token-file. Exit status: 0, 1 when the listener cannot
   be reached or refuses (or --close names no live session), 2 on bad flags.

Example:
   tunnel status --admin 127.0.0.1:9090
   tunnel status --admin 127.0.0.1:9090 --json | jq '.sessions[].identity.cn'
   tunnel status --admin 127.0.0.1:9090 --close 0a1b2c3d`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "admin", EnvVars: []string{"TUNNEL_ADMIN"}, Usage: "the admin listener's `ADDR` (the running process's --admin; required)"},
			&cli.StringFlag{Name: "token-file", EnvVars: []string{"TUNNEL_ADMIN_TOKEN_FILE"}, Usage: "`FILE` with the bearer token of the process's --admin-token-file"},
			&cli.BoolFlag{Name: "json", Usage: "print the status document as JSON"},
			&cli.StringFlag{Name: "close", Usage: "close the live session with this `ID` (its session_id)"},
			&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second, Usage: "limit on the request"},
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.Args().Len() > 0 {
				return &configError{err: fmt.Errorf("unexpected argument %q", c.Args().First())}
			}
			ac, err := newAdminClient(c.String("admin"), c.String("token-file"), c.Duration("timeout"))
			if err != nil {
				return err
			}
			if id := c.String("close"); id != "" {
				return ac.closeSession(c.Context, stdout, id)
			}
			return ac.printStatus(c.Context, stdout, c.Bool("json"))
		},
	}
}

// adminClient talks to a running process's admin listener.
type adminClient struct {
	base  string // http://ADDR
	token string // "" for none
	http  *http.Client
}

func newAdminClient(addr, tokenFile string, timeout time.Duration) (*adminClient, error) {
	if addr == "" {
		return nil, flagError("--admin", "required: the admin listener's address (the running process's --admin)")
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, flagError("--admin", "%q: want HOST:PORT: %v", addr, err)
	}
	if timeout <= 0 {
		return nil, flagError("--timeout", "%v: want a positive duration", timeout)
	}
	ac := &adminClient{base: "http://" + addr, http: &http.Client{Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, flagError("--token-file", "%v", err)
		}
		if ac.token = strings.TrimSpace(string(b)); ac.token == "" {
			return nil, flagError("--token-file", "%s is empty", tokenFile)
		}
	}
	return ac, nil
}

// do sends a request and returns the body of a 2xx answer; any other
// answer is an error quoting the listener's reason.
func (ac *adminClient) do(ctx context.Context, method, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, ac.base+path, nil)
	if err != nil {
		return nil, err
	}
	if ac.token != "" {
		req.Header.Set("Authorization", "Bearer "+ac.token)
	}
	resp, err := ac.http.Do(req)
	if err != nil {
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err // the URL is in the message already
		}
		return nil, fmt.Errorf("cannot reach the admin listener at %s: %w", strings.TrimPrefix(ac.base, "http://"), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("reading %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		why := strings.TrimSpace(string(body))
		if resp.StatusCode == http.StatusUnauthorized && ac.token == "" {
			why += " (give the process's --admin-token-file with --token-file)"
		}
		return nil, &statusError{code: resp.StatusCode, msg: fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, why)}
	}
	return body, nil
}

// statusError is an answer other than 2xx.
type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return e.msg }

func (ac *adminClient) closeSession(ctx context.Context, w io.Writer, id string) error {
	body, err := ac.do(ctx, http.MethodPost, "/sessions/"+url.PathEscape(id)+"/close")
	if err != nil {
		return err
	}
	_, err = w.Write(body)
	return err
}

func (ac *adminClient) printStatus(ctx context.Context, w io.Writer, asJSON bool) error {
	body, err := ac.do(ctx, http.MethodGet, "/status")
	if err != nil {
		return err
	}
	if asJSON {
		_, err := w.Write(body)
		return err
	}
	var st admin.Status
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&st); err != nil {
		return fmt.Errorf("GET /status: not a status document: %w", err)
	}
	return writeStatus(w, &st)
}

// writeExposes prints the server's exposes, then who publishes each (an
// expose nobody publishes is DOWN: its connections are reset).
func writeExposes(tw io.Writer, xs []admin.Expose, ago func(time.Time) string) {
	if len(xs) == 0 {
		return
	}
	fmt.Fprintf(tw, "\nexposes: %d\n", len(xs))
	fmt.Fprintln(tw, "  NAME\tLISTEN\tPUBLISHERS\tACTIVE\tTOTAL\tIN\tOUT")
	n := 0
	for _, x := range xs {
		pubs := fmt.Sprint(len(x.Publishers))
		if len(x.Publishers) == 0 {
			pubs = "0 (DOWN)"
		}
		n += len(x.Publishers)
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%d\t%s\t%s\n", x.Name, x.Listen, pubs, x.Active, x.StreamsTotal,
			byteSize(int64(x.BytesIn)), byteSize(int64(x.BytesOut)))
	}
	if n == 0 {
		return
	}
	fmt.Fprintf(tw, "\npublishers: %d\n", n)
	fmt.Fprintln(tw, "  EXPOSE\tSESSION\tIDENTITY\tADDR\tSINCE\tSTREAMS\tTOTAL")
	for _, x := range xs {
		for _, p := range x.Publishers {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%d\t%d\n", x.Name, p.SessionID, identityText(p.Identity), p.Addr, ago(p.Since), p.Streams, p.StreamsTotal)
		}
	}
}

// writeStatus prints st for a person, in sections of aligned columns.
func writeStatus(w io.Writer, st *admin.Status) error {
	now := st.Now
	ago := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Local().Format("2006-01-02 15:04:05") + " (" + roughDuration(now.Sub(t)) + " ago)"
	}
	in := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		d := t.Sub(now)
		if d < 0 {
			return t.Local().Format("2006-01-02 15:04:05") + " (" + roughDuration(-d) + " ago)"
		}
		return t.Local().Format("2006-01-02 15:04:05") + " (in " + roughDuration(d) + ")"
	}
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "tunnel %s %s, pid %d, up %s\n", st.Role, st.Version, st.PID, roughDuration(now.Sub(st.Started)))
	if s := st.Session; s != nil {
		switch s.State {
		case "up":
			fmt.Fprintf(tw, "session: up to %s since %s (id %s)\n", s.Server, ago(s.Since), s.ID)
		case "down":
			fmt.Fprintf(tw, "session: DOWN (down since %s)\n", ago(s.DownSince))
		default:
			fmt.Fprintln(tw, "session: none (raw mode: one TLS connection per local connection)")
		}
	}

	fmt.Fprintf(tw, "\nsessions: %d\n", len(st.Sessions))
	if len(st.Sessions) > 0 {
		fmt.Fprintln(tw, "  ID\tIDENTITY\tADDR\tSINCE\tSTREAMS\tIN\tOUT")
		for _, s := range st.Sessions {
			id := s.ID
			if s.Mode != "" {
				id += " (" + s.Mode + ")"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%d\t%s\t%s\n", id, identityText(s.Identity), s.Addr, ago(s.Since), s.Streams,
				byteSize(s.BytesIn), byteSize(s.BytesOut))
		}
	}
	if st.Role == "server" {
		fmt.Fprintf(tw, "\nroutes: %d\n", len(st.Routes))
		fmt.Fprintln(tw, "  NAME\tTARGET\tSTREAMS\tTOTAL\tIN\tOUT")
		for _, r := range st.Routes {
			target := r.Target
			if r.Proxy != "" {
				target += ",proxy-" + r.Proxy
			}
			name := r.Name
			if r.Raw {
				name += " (raw)"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%s\t%s\n", name, target, r.Streams, r.StreamsTotal, byteSize(int64(r.BytesIn)), byteSize(int64(r.BytesOut)))
		}
		writeExposes(tw, st.Exposes, ago)
	}
	if st.Role == "client" {
		fmt.Fprintf(tw, "\nforwards: %d\n", len(st.Forwards))
		fmt.Fprintln(tw, "  LISTEN\tROUTE\tSTREAMS\tTOTAL\tSESSION")
		for _, f := range st.Forwards {
			listen := f.Addr
			if f.Listen != f.Addr {
				listen += " (" + f.Listen + ")"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%s\n", listen, f.Route, f.Streams, f.Total, f.Session)
		}
		if len(st.Publications) > 0 {
			fmt.Fprintf(tw, "\npublications: %d\n", len(st.Publications))
			fmt.Fprintln(tw, "  NAME\tTARGET\tSTATE\tSTREAMS\tTOTAL\tFAILED")
			for _, p := range st.Publications {
				state := p.State
				if p.Refused != "" {
					state += " (" + p.Refused + ")"
				}
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%d\t%d\n", p.Name, p.Target, state, p.Streams, p.StreamsTotal, p.Failed)
			}
		}
	}

	fmt.Fprintf(tw, "\nrevocation sources: %d\n", len(st.Revocation))
	if len(st.Revocation) > 0 {
		fmt.Fprintln(tw, "  KIND\tSOURCE\tISSUER\tSTATE\tAGE\tNEXT REFRESH")
		for _, s := range st.Revocation {
			state := "no usable status"
			if s.Usable {
				state = "ok"
				if s.Status != "" {
					state = s.Status + " (serial " + s.Serial + ")"
				}
			}
			if s.Failures > 0 {
				state += fmt.Sprintf(", %d failed fetches", s.Failures)
			}
			age := "-"
			if !s.ThisUpdate.IsZero() {
				age = roughDuration(time.Duration(s.AgeSeconds) * time.Second)
			}
			next := "on reload"
			if !s.NextRefresh.IsZero() {
				next = in(s.NextRefresh)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", s.Kind, s.Source, s.Issuer, state, age, next)
		}
	}

	fmt.Fprintf(tw, "\ncertificates: %d\n", len(st.Certificates))
	fmt.Fprintln(tw, "  KIND\tSUBJECT\tSERIAL\tNOT AFTER")
	for _, c := range st.Certificates {
		warn := ""
		if d := time.Duration(c.ExpiresInSeconds) * time.Second; d < 0 {
			warn = "  EXPIRED"
		} else if d < 7*24*time.Hour {
			warn = "  EXPIRES SOON"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s%s\n", c.Kind, c.Subject, c.Serial, in(c.NotAfter), warn)
	}

	fmt.Fprintf(tw, "\nreloads: %d applied, %d rejected", st.Reload.Applied, st.Reload.Rejected)
	if l := st.Reload.Last; l != nil {
		fmt.Fprintf(tw, "; last %s by %s: %s (%d ms)", ago(l.At), l.Trigger, l.Result, l.DurationMS)
		if l.Error != "" {
			fmt.Fprintf(tw, "\n  error: %s", l.Error)
		}
	}
	fmt.Fprintln(tw)
	return tw.Flush()
}

// identityText is an identity in one column: its CN, else its first SAN,
// and the start of its fingerprint.
func identityText(id admin.Identity) string {
	name := id.CN
	if name == "" && len(id.SANs) > 0 {
		name = id.SANs[0]
	}
	fp := id.Fingerprint
	if len(fp) > 12 {
		fp = fp[:12]
	}
	return fmt.Sprintf("%s (sha256 %s)", name, fp)
}

// roughDuration is d to a unit a person reads at a glance.
func roughDuration(d time.Duration) string {
	switch {
	case d < time.Hour:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		return d.Round(time.Minute).String()
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// byteSize is n in B, KiB, MiB or GiB.
func byteSize(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}
