//go:build !unix

package pipe

import "net"

// readMore reads into b what src has already buffered, without waiting.
// Without a non-blocking read of the raw socket (Windows), every conn takes
// readMoreDeadline; on a socket that read returns nothing, since a socket
// Read under a passed deadline fails before it looks. Nothing is lost: the
// direction keeps its large buffer and its next Read takes what arrived,
// so a burst only goes out as one smallSize write more than on Unix.
func readMore(src net.Conn, b []byte) (int, error) {
	return readMoreDeadline(src, b)
}
