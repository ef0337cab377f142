package trust

import "sync/atomic"

// Store holds the current *Material behind one atomic pointer, so a
// handshake sees one consistent certificate, key and CA pool. It is safe for
// concurrent use. Create it with NewStore; the zero value holds no material,
// and handshakes using it fail.
type Store struct {
	cur atomic.Pointer[Material]
}

// NewStore returns a Store holding m. m may be nil (no material yet).
func NewStore(m *Material) *Store {
	s := &Store{}
	s.cur.Store(m)
	return s
}

// Material returns the current material, or nil if none was stored. The
// result is immutable and stays valid after a Swap.
func (s *Store) Material() *Material { return s.cur.Load() }

// Swap publishes m for every handshake that starts afterwards; handshakes in
// progress and established connections keep what they started with. It is
// meant for reloads: build m with Load and Swap only on success, so a failed
// reload keeps the old material.
func (s *Store) Swap(m *Material) { s.cur.Store(m) }
