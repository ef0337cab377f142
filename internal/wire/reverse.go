package wire

import (
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"strconv"
)

// Reverse tunnels (docs/PROTOCOL.md, section 7) add header version 2
// within tunnel/1: a client publishes a name on a stream it opens (kind
// publish), and the server carries each inbound connection for that name
// on a stream it opens toward the client (kind connect). A server that
// speaks only version 1 answers a version-2 header with StatusBadHeader,
// which is how a client learns that it cannot publish there.

// Version2 is the header version of the reverse-tunnel headers.
const Version2 byte = 2

// The kinds of version-2 header: the byte after the version.
const (
	KindPublish byte = 1 // client to server: publish a name for as long as the stream is open
	KindConnect byte = 2 // server to client: an inbound connection for a published name
)

// Address families of a connect header's address block.
const (
	familyNone byte = 0 // no addresses follow
	familyIPv4 byte = 4 // 4+4 address bytes, 2+2 port bytes
	familyIPv6 byte = 6 // 16+16 address bytes, 2+2 port bytes
)

// MaxConnectLen is the size of the largest valid connect header: version,
// kind, length, name, family and an IPv6 address block.
const MaxConnectLen = 4 + MaxRouteNameLen + 16 + 16 + 2 + 2

// Request is the header a client opens a stream with: a version-1 header
// opening a route, or a version-2 publish header.
type Request struct {
	Name    string // the route or the published name
	Publish bool   // a version-2 publish header; false: a version-1 open of route Name
}

// ReadRequest reads the header of a stream the client opened: version 1
// (section 4.1) or version 2 of kind publish (section 7.1). Like ReadHeader
// it reads exactly the header's bytes, returns io.EOF for a stream that
// ended before its first byte, and a *HeaderError for anything malformed
// (ErrBadVersion for a version or kind it does not know).
func ReadRequest(r io.Reader) (Request, error) {
	var buf [3 + MaxRouteNameLen]byte
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		if err == io.EOF {
			return Request{}, err
		}
		return Request{}, &HeaderError{Reason: "short header", Err: err}
	}
	switch buf[0] {
	case Version:
		name, err := readName(r, buf[2:], int(buf[1]))
		return Request{Name: name}, err
	case Version2:
		if buf[1] != KindPublish {
			return Request{}, &HeaderError{Reason: "version 2 kind " + strconv.Itoa(int(buf[1])) + " from a client", Err: ErrBadVersion}
		}
		name, err := readLenName(r, buf[2:])
		return Request{Name: name, Publish: true}, err
	}
	return Request{}, &HeaderError{Reason: "version " + strconv.Itoa(int(buf[0])), Err: ErrBadVersion}
}

// AppendPublish appends the header that publishes name (version 2, kind
// publish) and returns the extended buffer. It fails only if name is not
// a valid route name.
func AppendPublish(dst []byte, name string) ([]byte, error) {
	if err := CheckRouteName(name); err != nil {
		return dst, err
	}
	dst = append(dst, Version2, KindPublish, byte(len(name)))
	return append(dst, name...), nil
}

// Connect is the header of a stream the server opens toward a client that
// publishes Name: one inbound connection, from Source to Dest (the address
// it connected to on the server). Source and Dest are both valid or both
// the zero value (not known: the connection is not TCP).
type Connect struct {
	Name   string
	Source netip.AddrPort
	Dest   netip.AddrPort
}

// AppendConnect appends c's header (version 2, kind connect) and returns
// the extended buffer. Addresses of different families are written as
// IPv6, the IPv4 one mapped; if either is invalid, neither is written. It
// fails only if c.Name is not a valid route name.
func AppendConnect(dst []byte, c Connect) ([]byte, error) {
	if err := CheckRouteName(c.Name); err != nil {
		return dst, err
	}
	dst = append(dst, Version2, KindConnect, byte(len(c.Name)))
	dst = append(dst, c.Name...)
	src, dstAddr := c.Source, c.Dest
	if !src.IsValid() || !dstAddr.IsValid() {
		return append(dst, familyNone), nil
	}
	s, d := src.Addr().Unmap(), dstAddr.Addr().Unmap()
	if s.Is4() && d.Is4() {
		dst = append(dst, familyIPv4)
		dst = append(dst, s.AsSlice()...)
		dst = append(dst, d.AsSlice()...)
	} else {
		s16, d16 := s.As16(), d.As16()
		dst = append(dst, familyIPv6)
		dst = append(dst, s16[:]...)
		dst = append(dst, d16[:]...)
	}
	dst = binary.BigEndian.AppendUint16(dst, src.Port())
	return binary.BigEndian.AppendUint16(dst, dstAddr.Port()), nil
}

// ReadConnect reads the header of a stream the server opened (section
// 7.3), exactly its bytes, so the application bytes the server may send
// right behind it stay in r. It returns io.EOF for a stream that ended
// before its first byte and a *HeaderError for anything malformed
// (ErrBadVersion for a version or kind other than version 2 connect). An
// IPv4-mapped address is returned unmapped.
func ReadConnect(r io.Reader) (Connect, error) {
	var buf [MaxConnectLen]byte
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		if err == io.EOF {
			return Connect{}, err
		}
		return Connect{}, &HeaderError{Reason: "short header", Err: err}
	}
	if buf[0] != Version2 || buf[1] != KindConnect {
		return Connect{}, &HeaderError{Reason: "version " + strconv.Itoa(int(buf[0])) + " kind " + strconv.Itoa(int(buf[1])) + " from a server",
			Err: ErrBadVersion}
	}
	name, err := readLenName(r, buf[2:])
	if err != nil {
		return Connect{}, err
	}
	c := Connect{Name: name}
	if _, err := io.ReadFull(r, buf[:1]); err != nil {
		return Connect{}, &HeaderError{Reason: "no address family", Err: unexpected(err)}
	}
	var n int
	switch buf[0] {
	case familyNone:
		return c, nil
	case familyIPv4:
		n = 4
	case familyIPv6:
		n = 16
	default:
		return Connect{}, &HeaderError{Reason: "address family " + strconv.Itoa(int(buf[0]))}
	}
	b := buf[:2*n+4]
	if _, err := io.ReadFull(r, b); err != nil {
		return Connect{}, &HeaderError{Reason: "short address block", Err: unexpected(err)}
	}
	src, _ := netip.AddrFromSlice(b[:n])
	dst, _ := netip.AddrFromSlice(b[n : 2*n])
	c.Source = netip.AddrPortFrom(src.Unmap(), binary.BigEndian.Uint16(b[2*n:]))
	c.Dest = netip.AddrPortFrom(dst.Unmap(), binary.BigEndian.Uint16(b[2*n+2:]))
	return c, nil
}

// readLenName reads a name's length byte and then the name, into buf.
func readLenName(r io.Reader, buf []byte) (string, error) {
	if _, err := io.ReadFull(r, buf[:1]); err != nil {
		return "", &HeaderError{Reason: "short header", Err: unexpected(err)}
	}
	return readName(r, buf[1:], int(buf[0]))
}

// readName reads a name of n bytes into buf and checks it.
func readName(r io.Reader, buf []byte, n int) (string, error) {
	if n == 0 {
		return "", &HeaderError{Reason: "route name length 0"}
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		return "", &HeaderError{Reason: "short route name", Err: err}
	}
	name := string(buf[:n])
	if err := CheckRouteName(name); err != nil {
		return "", &HeaderError{Reason: "invalid route name", Err: err}
	}
	return name, nil
}

// unexpected is err, with a clean EOF in the middle of a header made
// io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
