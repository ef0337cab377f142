//go:build !unix

package pipe

import "net"

// tryWriter returns nil without a non-blocking write of the raw socket
// (Windows): a Lender's bytes then always go through the direction's own
// write.
func tryWriter(net.Conn) func([]byte) int { return nil }
