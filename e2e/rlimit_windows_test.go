package e2e

import "testing"

// raiseNoFile does nothing on Windows, which limits open handles by memory,
// not by a per-process count.
func raiseNoFile(t *testing.T, n uint64) { t.Helper() }
