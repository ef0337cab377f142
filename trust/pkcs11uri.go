package trust

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
)

// PKCS11URI is a parsed RFC 7512 URI naming a private key in a PKCS#11
// token, as --key takes it:
//
//	pkcs11:token=tunnel;object=server-key?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/tunnel/pin
//
// Exactly one of Token, Serial and SlotID selects the token; Object (the
// key's label, CKA_LABEL) or ID (CKA_ID) selects the key. It is a plain value.
type PKCS11URI struct {
	Token  string // token=: the token label
	Serial string // serial=: the token serial number
	SlotID *int   // slot-id=: the slot number
	Object string // object=: the key's label
	ID     []byte // id=: the key's CKA_ID, percent-encoded bytes
	// ModulePath is module-path=: the PKCS#11 library, an absolute path.
	ModulePath string
	// PINSource is pin-source=: the file holding the user PIN
	// ("file:/path" or "/path"); empty for a token that needs no login.
	PINSource string
}

// pkcs11Scheme starts a --key value that names a token key, not a file.
const pkcs11Scheme = "pkcs11:"

// IsPKCS11URI reports whether a --key value is a PKCS#11 URI rather than a
// file name.
func IsPKCS11URI(s string) bool {
	return len(s) >= len(pkcs11Scheme) && asciiLower(s[:len(pkcs11Scheme)]) == pkcs11Scheme
}

// asciiLower lowercases ASCII letters only, so byte offsets stay those of s.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// ParsePKCS11URI parses s as RFC 7512 describes, with the attributes this
// package can use: token, serial, slot-id, object, id and type (which must be
// "private" if given) in the path; module-path and pin-source in the query.
// It refuses what it would otherwise have to ignore or guess: an unknown
// attribute (vendor "x-" attributes excepted), one given twice, no or more
// than one token selector, no key selector, a relative module path, and
// pin-value (a PIN in a command line shows in the process list; put it in a
// file and name it with pin-source). Errors never repeat a PIN.
func ParsePKCS11URI(s string) (PKCS11URI, error) {
	var u PKCS11URI
	fail := func(format string, args ...any) (PKCS11URI, error) {
		return PKCS11URI{}, fmt.Errorf("trust: PKCS#11 URI %q: %s", RedactPKCS11URI(s), redactPIN(fmt.Sprintf(format, args...)))
	}
	if !IsPKCS11URI(s) {
		return fail("does not start with %q", pkcs11Scheme)
	}
	rest := s[len(pkcs11Scheme):]
	path, query, _ := strings.Cut(rest, "?")
	if strings.Contains(query, "#") || strings.Contains(path, "#") {
		return fail("a fragment is not allowed")
	}
	seen := map[string]bool{}
	attr := func(part, sep string) (string, string, error) {
		k, v, ok := strings.Cut(part, "=")
		if !ok || k == "" {
			return "", "", fmt.Errorf("%q is not NAME=VALUE", truncate(part, 60))
		}
		k = asciiLower(k)
		if seen[sep+k] {
			return "", "", fmt.Errorf("attribute %q given twice", k)
		}
		seen[sep+k] = true
		dv, err := url.PathUnescape(v)
		if err != nil {
			return "", "", fmt.Errorf("attribute %q: bad percent-encoding", k)
		}
		return k, dv, nil
	}
	if path != "" {
		for _, part := range strings.Split(path, ";") {
			k, v, err := attr(part, "p:")
			if err != nil {
				return fail("%v", err)
			}
			switch k {
			case "token":
				u.Token = v
			case "serial":
				u.Serial = v
			case "slot-id":
				n, err := strconv.Atoi(v)
				if err != nil || n < 0 {
					return fail("slot-id %q is not a slot number", truncate(v, 20))
				}
				u.SlotID = &n
			case "object":
				u.Object = v
			case "id":
				u.ID = []byte(v)
			case "type":
				if v != "private" {
					return fail("type=%s: --key names a private key (type=private)", truncate(v, 20))
				}
			case "manufacturer", "model", "library-manufacturer", "library-description", "library-version", "slot-description", "slot-manufacturer":
				return fail("attribute %q is not supported: select the token with token=, serial= or slot-id=", k)
			default:
				if !strings.HasPrefix(k, "x-") {
					return fail("unknown attribute %q", truncate(k, 40))
				}
			}
		}
	}
	if query != "" {
		for _, part := range strings.Split(query, "&") {
			k, v, err := attr(part, "q:")
			if err != nil {
				return fail("%v", err)
			}
			switch k {
			case "module-path":
				u.ModulePath = v
			case "pin-source":
				u.PINSource = v
			case "pin-value":
				return fail("pin-value puts the PIN where the process list shows it: write it to a file (mode 0600) and use pin-source=file:/path")
			case "module-name":
				return fail("module-name is not supported: give the library's absolute path with module-path=")
			default:
				if !strings.HasPrefix(k, "x-") {
					return fail("unknown query attribute %q", truncate(k, 40))
				}
			}
		}
	}
	selectors := 0
	for _, set := range []bool{u.Token != "", u.Serial != "", u.SlotID != nil} {
		if set {
			selectors++
		}
	}
	switch {
	case selectors == 0:
		return fail("no token: give token=LABEL, serial= or slot-id=")
	case selectors > 1:
		return fail("give exactly one of token=, serial= and slot-id=")
	case u.Object == "" && len(u.ID) == 0:
		return fail("no key: give object=LABEL or id=")
	case u.ModulePath == "":
		return fail("no module-path=: the PKCS#11 library to load, e.g. module-path=/usr/lib/softhsm/libsofthsm2.so")
	case !strings.HasPrefix(u.ModulePath, "/"):
		return fail("module-path %q is not an absolute path", truncate(u.ModulePath, 200))
	}
	if u.PINSource != "" {
		p := strings.TrimPrefix(u.PINSource, "file:")
		if !strings.HasPrefix(p, "/") {
			return fail("pin-source %q: want file:/absolute/path", truncate(u.PINSource, 200))
		}
		u.PINSource = p
	}
	return u, nil
}

// readPIN reads the PIN from the pin-source file: its first line, without
// the line end.
func (u PKCS11URI) readPIN() (string, error) {
	if u.PINSource == "" {
		return "", nil
	}
	data, err := os.ReadFile(u.PINSource)
	if err != nil {
		return "", fmt.Errorf("pin-source: %w", err)
	}
	pin, _, _ := strings.Cut(string(data), "\n")
	pin = strings.TrimSuffix(pin, "\r")
	if pin == "" {
		return "", errors.New("pin-source: the file is empty")
	}
	return pin, nil
}

// tokenName describes the token selector for messages.
func (u PKCS11URI) tokenName() string {
	switch {
	case u.Token != "":
		return fmt.Sprintf("token %q", u.Token)
	case u.Serial != "":
		return fmt.Sprintf("token serial %q", u.Serial)
	case u.SlotID != nil:
		return fmt.Sprintf("slot %d", *u.SlotID)
	}
	return "token"
}

// keyName describes the key selector for messages.
func (u PKCS11URI) keyName() string {
	if u.Object != "" {
		return fmt.Sprintf("object %q", u.Object)
	}
	return fmt.Sprintf("id %x", u.ID)
}

// RedactPKCS11URI returns s with the value of every pin-value attribute
// replaced, cut to 300 bytes, for messages and logs.
func RedactPKCS11URI(s string) string { return truncate(redactPIN(s), 300) }

// redactPIN replaces the value after each "pin-value=" (any case) up to the
// next "&", ";" or "#".
func redactPIN(s string) string {
	const attr = "pin-value="
	var b strings.Builder
	for {
		i := strings.Index(asciiLower(s), attr)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i+len(attr)])
		b.WriteString("REDACTED")
		s = s[i+len(attr):]
		if j := strings.IndexAny(s, "&;#"); j >= 0 {
			s = s[j:]
		} else {
			s = ""
		}
	}
}
