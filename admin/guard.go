package admin

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
)

// What the admin listener refuses before any endpoint runs, and why: it
// changes the state of a running tunnel, and browsers are the easiest way
// to reach a loopback port from the outside. A web page can make a browser
// POST to http://127.0.0.1:9090/reload without a CORS preflight (a
// "simple" request with a text/plain or form body), and can point a DNS
// name it controls at 127.0.0.1 and then read /metrics as its own origin
// (DNS rebinding). Browsers mark the first with an Origin header and the
// second with the attacker's name in Host; neither is what an operator's
// curl or Prometheus sends.

// Reasons of admin_refused lines.
const (
	refusedHost   = "host_not_allowed"
	refusedOrigin = "cross_origin"
	refusedToken  = "bad_token"
)

// Token limits: long enough not to be guessed, short enough for a header.
const (
	minTokenLen = 16
	maxTokenLen = 4096
)

// LoadToken reads a bearer token from the file at path: its content with
// surrounding whitespace (a final newline) removed, 16 to 4096 visible
// ASCII characters with no spaces. Errors name the file, never the token.
func LoadToken(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("admin: token file: %w", err)
	}
	tok := bytes.TrimSpace(data)
	switch {
	case len(tok) < minTokenLen:
		return nil, fmt.Errorf("admin: token file %q: the token has %d characters, want at least %d (for example: head -c 32 /dev/urandom | base64)", path, len(tok), minTokenLen)
	case len(tok) > maxTokenLen:
		return nil, fmt.Errorf("admin: token file %q: the token is longer than %d characters", path, maxTokenLen)
	}
	for _, c := range tok {
		if c <= ' ' || c >= 0x7f {
			return nil, fmt.Errorf("admin: token file %q: the token must be one line of visible ASCII characters without spaces", path)
		}
	}
	return tok, nil
}

// allowedHost reports whether hostport, a Host header or an Origin's host,
// names the listener that accepted the request: its port, and as host the
// address the connection came to, a loopback address, or "localhost".
// local is that listener address; an invalid one allows loopback only.
func allowedHost(hostport string, local netip.AddrPort) bool {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = hostport, "80" // no port: the default one
		if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
			host = host[1 : len(host)-1]
		}
	}
	if !local.IsValid() || port != fmt.Sprint(local.Port()) {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	if err != nil || a.Zone() != "" {
		return false // a name: what DNS rebinding sends
	}
	a = a.Unmap()
	return a.IsLoopback() || a == local.Addr().Unmap()
}

// localAddr is the address of the listener that accepted r, or the zero
// AddrPort if the request did not come through a listener.
func localAddr(r *http.Request) netip.AddrPort {
	la, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if la == nil {
		return netip.AddrPort{}
	}
	ap, err := netip.ParseAddrPort(la.String())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// checkOrigin refuses a request a browser sent on behalf of another
// origin: an Origin header (even "null") that is not http:// and the
// request's own Host, or a Sec-Fetch-Site that says cross-site or
// same-site. A request without either header is not from a browser page.
func checkOrigin(r *http.Request, local netip.AddrPort) error {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return fmt.Errorf("Sec-Fetch-Site %q", truncate(site, 40))
	}
	origins, ok := r.Header["Origin"]
	if !ok {
		return nil
	}
	if len(origins) != 1 {
		return errors.New("several Origin headers")
	}
	u, err := url.Parse(origins[0])
	if err != nil || u.Scheme != "http" || u.Host == "" || u.Path != "" || u.User != nil ||
		!strings.EqualFold(u.Host, r.Host) || !allowedHost(u.Host, local) {
		return fmt.Errorf("Origin %q is not this listener", truncate(origins[0], 100))
	}
	return nil
}

// tokenOK reports whether r carries "Authorization: Bearer TOKEN" with
// TOKEN equal to want, comparing in constant time (hashes, so the length
// of want does not leak either).
func tokenOK(r *http.Request, want []byte) bool {
	scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	a, b := sha256.Sum256([]byte(strings.TrimSpace(got))), sha256.Sum256(want)
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// truncate cuts s to n bytes for a log line or a message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
