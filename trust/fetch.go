package trust

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"code.dny.dev/ssrf"
)

// Fetch limits and defaults. Distribution Point URLs come from certificates
// a peer presents, so everything about a fetch is bounded.
const (
	MaxCRLURLLen            = 2048
	DefaultCRLFetchTimeout  = 30 * time.Second
	DefaultCRLMaxBytes      = 5 << 20
	crlFetchHeaderBytes     = 64 << 10
	crlFetchTLSHandshakeMax = 10 * time.Second
)

// ErrURLRefused wraps every reason CheckCRLURL or the dialer refuses a
// Distribution Point, for errors.Is.
var ErrURLRefused = errors.New("CRL URL refused")

// testAllowPrefixes are addresses the fetcher may dial although the SSRF
// guard refuses them. Only a binary built with the tunnel_testhooks tag can
// set it (see testhooks.go); release builds have no way to.
var testAllowPrefixes []netip.Prefix

// FetchOptions configure a CRLFetcher. The zero value is not useful; start
// from DefaultFetchOptions.
type FetchOptions struct {
	AllowHTTP bool          // plain http URLs (CRLs are signed, so this is the norm)
	Timeout   time.Duration // whole fetch, from dial to last byte
	MaxBytes  int64         // response body cap; a larger body is aborted
	UserAgent string
}

// DefaultFetchOptions are the defaults of the --crl-* fetch flags.
func DefaultFetchOptions() FetchOptions {
	return FetchOptions{AllowHTTP: true, Timeout: DefaultCRLFetchTimeout, MaxBytes: DefaultCRLMaxBytes, UserAgent: "tunnel-crl-fetcher"}
}

// CRLFetcher downloads CRLs from Distribution Point URLs with SSRF
// hardening: CheckCRLURL before any request, the dialled address checked at
// connect time (so DNS rebinding cannot slip past), no proxy, no redirects,
// a body cap and a timeout. It is safe for concurrent use.
type CRLFetcher struct {
	opts   FetchOptions
	guard  *ssrf.Guardian
	allow  []netip.Prefix // test-only allowance; see testAllowPrefixes
	client *http.Client
}

// dialFunc is how a fetcher connects; tests replace the dialer to see what
// would be dialled without sending anything.
type dialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// NewCRLFetcher returns a fetcher with opts.
func NewCRLFetcher(opts FetchOptions) *CRLFetcher {
	return newCRLFetcher(opts, nil)
}

// newCRLFetcher returns a fetcher that connects with dial, or with a
// net.Dialer whose Control hook is the SSRF guard if dial is nil.
func newCRLFetcher(opts FetchOptions, dial dialFunc) *CRLFetcher {
	f := &CRLFetcher{opts: opts, guard: ssrf.New(ssrf.WithAnyPort()), allow: testAllowPrefixes}
	if dial == nil {
		dial = (&net.Dialer{Timeout: opts.Timeout, Control: f.control}).DialContext
	}
	f.client = &http.Client{
		Transport: &http.Transport{
			Proxy:                  nil, // a proxy would be what the guard sees, not the target
			DialContext:            dial,
			TLSHandshakeTimeout:    crlFetchTLSHandshakeMax,
			ResponseHeaderTimeout:  opts.Timeout,
			MaxResponseHeaderBytes: crlFetchHeaderBytes,
			DisableCompression:     true, // the body cap then counts bytes on the wire
			MaxIdleConns:           4,
			IdleConnTimeout:        30 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       opts.Timeout,
	}
	return f
}

// TestAllowanceActive reports whether this binary was built with the
// test-only hooks and they are in use: the allowance that lets the fetcher
// reach refused addresses, or CRL store caps other than the defaults. The
// server logs a loud warning when it is.
func TestAllowanceActive() bool {
	return len(testAllowPrefixes) > 0 || storeLimitDefaults != CRLStoreLimits{
		NewURLsPerMinute: DefaultNewURLsPerMinute, TrackedURLs: DefaultTrackedURLs, RefusedURLs: DefaultRefusedURLs}
}

// control is the dialer's Control hook: it sees the resolved address just
// before connect.
func (f *CRLFetcher) control(network, address string, c syscall.RawConn) error {
	if ap, err := netip.ParseAddrPort(address); err == nil && f.allowed(ap.Addr()) {
		return nil
	}
	if err := f.guard.Safe(network, address, c); err != nil {
		return fmt.Errorf("%w: dialling %s: %v", ErrURLRefused, address, err)
	}
	return nil
}

func (f *CRLFetcher) allowed(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range f.allow {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Close releases idle connections.
func (f *CRLFetcher) Close() { f.client.CloseIdleConnections() }

// Fetch downloads the CRL at rawURL and returns the body. Errors name the
// URL's problem: refused URL or address, timeout, status, redirect, size.
func (f *CRLFetcher) Fetch(ctx context.Context, rawURL string) ([]byte, error) {
	u, _, err := f.precheck(rawURL)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrURLRefused, err)
	}
	req.Header.Set("Accept", "application/pkix-crl, application/x-pkcs7-crl;q=0.5, */*;q=0.1")
	return f.do(req, f.opts.MaxBytes)
}

// maxOCSPGetRequest is the longest base64 request RFC 5019 sends by GET;
// a longer one goes by POST.
const maxOCSPGetRequest = 255

// FetchOCSP sends the DER OCSP request der to the responder at rawURL and
// returns the response body, at most maxBytes. It uses GET with the
// request in the path (RFC 5019, cacheable) when post is false and the
// request is short enough, and POST (RFC 6960 appendix A) otherwise. The
// URL passes the same checks as a CRL Distribution Point, and the fetch the
// same guard, timeout and caps.
func (f *CRLFetcher) FetchOCSP(ctx context.Context, rawURL string, der []byte, post bool, maxBytes int64) ([]byte, error) {
	u, _, err := f.precheck(rawURL)
	if err != nil {
		return nil, err
	}
	var req *http.Request
	if enc := base64.StdEncoding.EncodeToString(der); !post && len(enc) <= maxOCSPGetRequest {
		target := strings.TrimSuffix(u.String(), "/") + "/" + url.PathEscape(enc)
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	} else {
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(der))
		if err == nil {
			req.Header.Set("Content-Type", "application/ocsp-request")
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrURLRefused, err)
	}
	req.Header.Set("Accept", "application/ocsp-response")
	return f.do(req, min(maxBytes, f.opts.MaxBytes))
}

// do sends req through the guarded client and reads at most maxBytes of a
// 200 response.
func (f *CRLFetcher) do(req *http.Request, maxBytes int64) ([]byte, error) {
	req.Header.Set("User-Agent", f.opts.UserAgent)
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return nil, fmt.Errorf("%w: redirect (%s to %q) not followed", ErrURLRefused, resp.Status, truncate(resp.Header.Get("Location"), 200))
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("HTTP status %s", resp.Status)
	}
	if resp.ContentLength > maxBytes {
		return nil, fmt.Errorf("response of %d bytes exceeds the cap of %d", resp.ContentLength, maxBytes)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading response: %w", err)
	}
	if int64(len(body)) > maxBytes {
		return nil, fmt.Errorf("response exceeds the cap of %d bytes; aborted", maxBytes)
	}
	return body, nil
}

// precheck is every check of rawURL that needs no network: CheckCRLURL,
// then, for an IP literal, the SSRF guard's verdict on the address and
// port, so a refused literal is refused before any packet. It returns the
// URL, or the reason it is not fetched (ReasonSchemeNotFetched for a scheme
// other than http(s), or http under AllowHTTP false; ReasonURLRefused for
// anything else) with an error wrapping ErrURLRefused.
func (f *CRLFetcher) precheck(rawURL string) (*url.URL, string, error) {
	if p, err := url.Parse(rawURL); err == nil && p.Scheme != "" {
		switch p.Scheme { // url.Parse lowercases it
		case "https":
		case "http":
			if !f.opts.AllowHTTP {
				return nil, ReasonSchemeNotFetched, fmt.Errorf("%w: %q: plain http is disabled (--crl-allow-http=false)", ErrURLRefused, truncate(rawURL, 120))
			}
		default:
			return nil, ReasonSchemeNotFetched, fmt.Errorf("%w: %q: scheme %q is not fetched (http and https only)", ErrURLRefused, truncate(rawURL, 120), truncate(p.Scheme, 20))
		}
	}
	u, err := CheckCRLURL(rawURL, f.opts.AllowHTTP)
	if err != nil {
		return nil, ReasonURLRefused, err
	}
	a, err := netip.ParseAddr(u.Hostname())
	if err != nil || f.allowed(a) {
		return u, "", nil // a name: its addresses are checked when dialled
	}
	port := uint16(80)
	if u.Scheme == "https" {
		port = 443
	}
	if p := u.Port(); p != "" {
		n, _ := strconv.Atoi(p) // CheckCRLURL checked it is 1..65535
		port = uint16(n)
	}
	// SafeAddrPort, not Safe: Safe wants the network name tcp4 or tcp6 and
	// refuses "tcp", which once refused every literal, public ones too.
	if err := f.guard.SafeAddrPort(netip.AddrPortFrom(a, port)); err != nil {
		return nil, ReasonURLRefused, fmt.Errorf("%w: address %s: %v", ErrURLRefused, a, err)
	}
	return u, "", nil
}

// CheckCRLURL parses a Distribution Point URL and refuses, before any
// request, what a hostile certificate could use to reach somewhere it should
// not: a scheme other than http(s) (http only if allowHTTP), userinfo, an
// opaque or over-long URL, a non-ASCII or percent-encoded host, and an IP
// literal in anything but its canonical form (octal, hex, decimal-integer
// and short forms like 127.1 are what inet_aton would accept and we will
// not). Errors wrap ErrURLRefused. The addresses themselves are checked when
// dialled.
func CheckCRLURL(raw string, allowHTTP bool) (*url.URL, error) {
	refuse := func(why string) (*url.URL, error) {
		return nil, fmt.Errorf("%w: %q: %s", ErrURLRefused, truncate(raw, 120), why)
	}
	if len(raw) > MaxCRLURLLen {
		return refuse(fmt.Sprintf("longer than %d bytes", MaxCRLURLLen))
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] <= ' ' || raw[i] >= 0x7f {
			return refuse("contains a control, space or non-ASCII character")
		}
	}
	u, err := url.Parse(raw)
	if err != nil {
		return refuse("does not parse")
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !allowHTTP {
			return refuse("plain http is disabled (--crl-allow-http=false)")
		}
	default:
		return refuse("scheme must be http or https")
	}
	if u.Opaque != "" {
		return refuse("not a hierarchical URL")
	}
	authority := rawAuthority(raw)
	if u.User != nil || strings.Contains(authority, "@") {
		return refuse("userinfo is not allowed")
	}
	if strings.Contains(authority, "%") {
		return refuse("percent-encoding in the host is not allowed")
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return refuse("no host")
	}
	if port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port[0] == '0' {
			return refuse("invalid port")
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return refuse("empty port")
	}
	if strings.HasPrefix(u.Host, "[") {
		a, err := netip.ParseAddr(host)
		if err != nil || !a.Is6() || a.Zone() != "" {
			return refuse("invalid IPv6 literal")
		}
		return u, nil
	}
	if err := checkHostName(host); err != "" {
		return refuse(err)
	}
	return u, nil
}

// checkHostName accepts a DNS name or a canonical dotted-quad IPv4 address
// and returns why it refuses anything else.
func checkHostName(host string) string {
	if len(host) > 253 {
		return "host name too long"
	}
	labels := strings.Split(host, ".")
	last := labels[len(labels)-1]
	// A top-level label that is numeric or hex means the host is an IP
	// literal; real top-level domains are never numeric.
	if isDigits(last) || strings.HasPrefix(strings.ToLower(last), "0x") || last == "" && len(labels) > 1 && isDigits(labels[len(labels)-2]) {
		a, err := netip.ParseAddr(host)
		if err != nil || !a.Is4() || a.String() != host {
			return "IP literal in a non-canonical form (octal, hex, integer or short)"
		}
		return ""
	}
	for _, l := range labels {
		if l == "" && len(labels) > 1 {
			return "empty label in host name"
		}
		if len(l) > 63 {
			return "host name label too long"
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "invalid character in host name"
			}
		}
	}
	return ""
}

// rawAuthority returns the authority part of a URL as written, before
// net/url decodes it.
func rawAuthority(raw string) string {
	_, rest, ok := strings.Cut(raw, "//")
	if !ok {
		return ""
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// CheckFetchURL reports whether a CRL Distribution Point or an OCSP
// responder URL would be fetched under opts: "" and nil if so, else the
// reason (ReasonSchemeNotFetched or ReasonURLRefused) and an error naming
// the problem. It sends nothing: an IP literal is judged by the SSRF guard
// now, a host name's addresses only when a fetch dials them. It is what
// `tunnel check` runs on the responders and Distribution Points it finds.
func CheckFetchURL(raw string, opts FetchOptions) (reason string, err error) {
	f := &CRLFetcher{opts: opts, guard: ssrf.New(ssrf.WithAnyPort()), allow: testAllowPrefixes}
	_, reason, err = f.precheck(raw)
	return reason, err
}
