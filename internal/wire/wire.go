// Package wire is the stream header and status code of the tunnel protocol:
// the only bytes the tunnel adds inside a yamux stream (docs/PROTOCOL.md).
package wire

import (
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Version is the only header version this package speaks.
const Version byte = 1

// MaxRouteNameLen is the longest route name the header can carry.
const MaxRouteNameLen = 255

// MaxHeaderLen is the size of the largest valid header: version, length and
// name. A reader never consumes more than this before the application bytes.
const MaxHeaderLen = 2 + MaxRouteNameLen

// Status is the one byte the server answers a header with. The zero value is
// StatusOK.
type Status byte

// The status codes. After any status other than StatusOK the server closes
// the stream.
const (
	StatusOK                 Status = 0
	StatusUnknownRoute       Status = 1
	StatusForbidden          Status = 2
	StatusBackendUnreachable Status = 3
	StatusOverLimit          Status = 4
	StatusBadHeader          Status = 5
)

var statusNames = [...]string{
	StatusOK:                 "ok",
	StatusUnknownRoute:       "unknown_route",
	StatusForbidden:          "forbidden",
	StatusBackendUnreachable: "backend_unreachable",
	StatusOverLimit:          "over_limit",
	StatusBadHeader:          "bad_header",
}

// String returns the status as a stable snake_case name ("unknown_route"),
// or "status_N" for a code this version does not define.
func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return "status_" + strconv.Itoa(int(s))
}

// IsValid reports whether s is a status code this version defines.
func (s Status) IsValid() bool { return int(s) < len(statusNames) }

// ErrBadVersion is returned (wrapped in a *HeaderError) when a header starts
// with a version other than Version.
var ErrBadVersion = errors.New("unsupported version")

// HeaderError reports a malformed stream header. The server answers it with
// StatusBadHeader.
type HeaderError struct {
	Reason string // what is wrong, e.g. "route name length 0"
	Err    error  // the cause, if any: ErrBadVersion, io.ErrUnexpectedEOF, ...
}

func (e *HeaderError) Error() string {
	if e.Err != nil {
		return "wire: bad header: " + e.Reason + ": " + e.Err.Error()
	}
	return "wire: bad header: " + e.Reason
}

func (e *HeaderError) Unwrap() error { return e.Err }

// StatusError is returned by ReadStatus when the server refused the stream.
type StatusError struct{ Code Status }

func (e *StatusError) Error() string { return "wire: stream refused: " + e.Code.String() }

// CheckRouteName reports whether name may be carried in a header and used as
// a route name: 1 to 255 ASCII letters, digits, '-', '_' or '.'.
func CheckRouteName(name string) error {
	if len(name) == 0 {
		return errors.New("wire: route name is empty")
	}
	if len(name) > MaxRouteNameLen {
		return fmt.Errorf("wire: route name is %d bytes, longer than %d", len(name), MaxRouteNameLen)
	}
	for i := 0; i < len(name); i++ {
		if !routeByte(name[i]) {
			return fmt.Errorf("wire: route name %q: byte %d (%q) is not a letter, digit, '-', '_' or '.'", name, i, name[i])
		}
	}
	return nil
}

func routeByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '_' || c == '.'
}

// AppendHeader appends the header that opens a stream to route and returns
// the extended buffer. It fails only if the route name is invalid.
func AppendHeader(dst []byte, route string) ([]byte, error) {
	if err := CheckRouteName(route); err != nil {
		return dst, err
	}
	dst = append(dst, Version, byte(len(route)))
	return append(dst, route...), nil
}

// ReadHeader reads one version-1 header from r and returns the route name;
// a version-2 header is an ErrBadVersion (a server reads headers with
// ReadRequest, which knows both). It reads
// exactly the header's bytes, never more, so the application bytes that
// follow stay in r. A malformed header is a *HeaderError; an error reading r
// before the first byte is returned as it is (io.EOF for a stream closed at
// once). The caller sets any read deadline.
func ReadHeader(r io.Reader) (string, error) {
	var buf [MaxHeaderLen]byte
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		if err == io.EOF {
			return "", err
		}
		return "", &HeaderError{Reason: "short header", Err: err}
	}
	if buf[0] != Version {
		return "", &HeaderError{Reason: "version " + strconv.Itoa(int(buf[0])), Err: ErrBadVersion}
	}
	return readName(r, buf[2:], int(buf[1]))
}

// WriteStatus writes the one status byte.
func WriteStatus(w io.Writer, s Status) error {
	_, err := w.Write([]byte{byte(s)})
	return err
}

// ReadStatus reads the one status byte. It returns nil for StatusOK, a
// *StatusError for any other code, and the read error (io.EOF if the stream
// ended before the status) otherwise. It reads exactly one byte.
func ReadStatus(r io.Reader) error {
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return err
	}
	if s := Status(b[0]); s != StatusOK {
		return &StatusError{Code: s}
	}
	return nil
}
