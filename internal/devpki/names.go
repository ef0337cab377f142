package devpki

import (
	"fmt"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits on the names put into issued certificates.
const (
	maxURILen     = 2048 // the SPIFFE ID limit, applied to every URI SAN
	maxOrgUnitLen = 64   // X.520 ub-organizational-unit-name
)

// CheckURI reports whether s can be a URI SAN of an issued certificate: an
// absolute URI (SCHEME:...) of at most 2048 bytes. A spiffe: URI must be a
// SPIFFE ID: spiffe://TRUST-DOMAIN[/PATH], the trust domain of lowercase
// letters, digits, '.', '-' and '_' (no port, no user info), each path
// segment non-empty, not "." or "..", of letters, digits, '.', '-' and
// '_', and no query, fragment or trailing slash.
func CheckURI(s string) error {
	if len(s) > maxURILen {
		return fmt.Errorf("devpki: URI %.40q...: longer than %d bytes", s, maxURILen)
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("devpki: URI %q: %w", s, err)
	}
	if !u.IsAbs() {
		return fmt.Errorf("devpki: URI %q is not absolute: want SCHEME:..., such as spiffe://example.org/app", s)
	}
	if u.Scheme == "spiffe" {
		return checkSPIFFEID(s)
	}
	return nil
}

// checkSPIFFEID checks s, a URI with the scheme spiffe, against the SPIFFE
// ID rules (SPIFFE-ID.md, section 2).
func checkSPIFFEID(s string) error {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return fmt.Errorf("devpki: SPIFFE ID %q: want spiffe://TRUST-DOMAIN/PATH, scheme in lowercase", s)
	}
	td, path, hasPath := strings.Cut(rest, "/")
	if td == "" {
		return fmt.Errorf("devpki: SPIFFE ID %q has no trust domain", s)
	}
	for _, c := range []byte(td) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("devpki: SPIFFE ID %q: trust domain %q: want lowercase letters, digits, '.', '-' and '_' (no port, user info, query or fragment)", s, td)
		}
	}
	if !hasPath {
		return nil
	}
	for _, seg := range strings.Split(path, "/") {
		switch seg {
		case "":
			return fmt.Errorf("devpki: SPIFFE ID %q: empty path segment (no \"//\" and no trailing \"/\")", s)
		case ".", "..":
			return fmt.Errorf("devpki: SPIFFE ID %q: path segment %q is not allowed", s, seg)
		}
		for _, c := range []byte(seg) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
				return fmt.Errorf("devpki: SPIFFE ID %q: path segment %q: want letters, digits, '.', '-' and '_' (no query or fragment)", s, seg)
			}
		}
	}
	return nil
}

// CheckOrgUnit reports whether s can be a subject OU of an issued
// certificate: 1 to 64 bytes of UTF-8 without control characters, not
// blank.
func CheckOrgUnit(s string) error {
	switch {
	case strings.TrimSpace(s) == "":
		return fmt.Errorf("devpki: organizational unit %q is empty", s)
	case len(s) > maxOrgUnitLen:
		return fmt.Errorf("devpki: organizational unit %.40q...: longer than %d bytes", s, maxOrgUnitLen)
	case !utf8.ValidString(s):
		return fmt.Errorf("devpki: organizational unit %q is not UTF-8", s)
	case strings.ContainsFunc(s, unicode.IsControl):
		return fmt.Errorf("devpki: organizational unit %q holds a control character", s)
	}
	return nil
}
