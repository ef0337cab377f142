package mux

import (
	"encoding/binary"
	"fmt"
)

// yamux frame layout (hashicorp/yamux spec.md): version, type, flags (2),
// stream ID (4), length (4), big-endian. For a data frame the length is the
// size of the body that follows; for every other type it is a value (a
// window delta, a ping's opaque value, a go-away code) and no body follows.
const (
	headerSize   = 12
	protoVersion = 0

	typeData         = 0
	typeWindowUpdate = 1
	typePing         = 2
	typeGoAway       = 3

	flagSYN    = 1
	flagACK    = 2
	flagFIN    = 4
	flagRST    = 8
	knownFlags = flagSYN | flagACK | flagFIN | flagRST

	goAwayProtoErr = 1

	// initialWindow is the credit every yamux stream starts with, in each
	// direction, before any window update: yamux's initialStreamWindow,
	// fixed by its protocol.
	initialWindow = 256 << 10
)

// header is one yamux frame header.
type header [headerSize]byte

func makeHeader(typ byte, flags uint16, id, length uint32) header {
	var h header
	h[0] = protoVersion
	h[1] = typ
	binary.BigEndian.PutUint16(h[2:4], flags)
	binary.BigEndian.PutUint32(h[4:8], id)
	binary.BigEndian.PutUint32(h[8:12], length)
	return h
}

func (h *header) version() byte        { return h[0] }
func (h *header) typ() byte            { return h[1] }
func (h *header) flags() uint16        { return binary.BigEndian.Uint16(h[2:4]) }
func (h *header) streamID() uint32     { return binary.BigEndian.Uint32(h[4:8]) }
func (h *header) length() uint32       { return binary.BigEndian.Uint32(h[8:12]) }
func (h *header) setLength(n uint32)   { binary.BigEndian.PutUint32(h[8:12], n) }
func (h *header) setFlags(f uint16)    { binary.BigEndian.PutUint16(h[2:4], f) }
func (h *header) has(flag uint16) bool { return h.flags()&flag != 0 }

// String renders h for error messages.
func (h *header) String() string {
	return fmt.Sprintf("type %d flags %#x stream %d length %d", h.typ(), h.flags(), h.streamID(), h.length())
}
