package audit

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"sync/atomic"
)

// sessionSeq counts sessions from a random start, so ids differ between
// runs of the process; they never repeat within one (for 2^32 sessions).
var sessionSeq atomic.Uint32

func init() {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand does not fail on supported platforms
	sessionSeq.Store(binary.BigEndian.Uint32(b[:]))
}

// NewSessionID returns the next session id of this process: eight
// lowercase hex digits, unique in the process and all of one width, so a
// grep for one id (session_id=0a1b2c3d) never matches another. Both roles
// put it on every line of the session (SessionID) and the admin status
// lists sessions by it. Safe for concurrent use.
func NewSessionID() string {
	return fmt.Sprintf("%08x", sessionSeq.Add(1))
}
