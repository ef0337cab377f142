package server

import (
	"container/list"
	"net"
	"net/netip"
	"sync"
)

// The slot set holds the handshakes in flight, at most MaxHandshakes of
// them. A slot bounds handshake work (a key exchange and a signature) and
// the memory of a handshake in flight (about 70 KiB), not waiting: once
// the server has written its flight and waits for the peer's next one, the
// handshake is waiting on its peer. A full set makes room for a new
// handshake by resetting its oldest one waiting on its peer, and refuses
// the newcomer only when every slot is working. A real client waits there
// for one round trip, so under a flood of ClientHellos that stall after the
// server's flight the oldest waiting ones are the attacker's.

// ReasonHandshakeEvicted is the conn_rejected reason of a handshake reset
// to make room in a full set of handshake slots: it was the oldest one
// waiting for its peer's next flight.
const ReasonHandshakeEvicted = "handshake_evicted"

// slotSet is the set of handshakes in flight, at most max of them. The zero
// value is not usable; the Server makes one in New. Its methods and those
// of its slots are safe for concurrent use.
type slotSet struct {
	max int

	mu      sync.Mutex
	held    list.List // of *handshakeSlot, in the order they were taken, oldest first; guarded by mu
	waiting int       // slots in held waiting on their peer; guarded by mu
}

// handshakeSlot is one handshake's place in the set. Its owner (the
// goroutine running the handshake) marks it as it reads and writes
// (helloConn); the set may evict it from another goroutine, by closing
// conn, which ends the handshake's reads.
type handshakeSlot struct {
	set  *slotSet
	conn net.Conn   // closing it ends the handshake
	ip   netip.Addr // the client's, for the conn_rejected line

	// All guarded by set.mu.
	el      *list.Element // its place in set.held; nil once released or evicted
	wrote   bool          // the server has written to the peer
	reading bool          // a read of the peer is in progress, nothing buffered above it
	gone    bool          // evicted: its owner returns without a word
}

// take gives c, from ip, a slot. When the set is full it evicts the oldest
// slot whose handshake waits on its peer and returns it as a victim for
// the caller to reject; the newcomer takes its place. With every slot
// working it returns a nil slot: the caller refuses c.
func (s *slotSet) take(c net.Conn, ip netip.Addr) (*handshakeSlot, *victim) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out *victim
	if s.held.Len() >= s.max {
		if out = s.evictLocked(); out == nil {
			return nil, nil
		}
	}
	sl := &handshakeSlot{set: s, conn: c, ip: ip}
	sl.el = s.held.PushBack(sl)
	return sl, out
}

// release gives sl's slot back. It reports false if sl was evicted, in
// which case the evictor logged and counted it and the owner adds nothing.
// It may be called again.
func (s *slotSet) release(sl *handshakeSlot) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sl.el != nil {
		s.removeLocked(sl)
	}
	return !sl.gone
}

// counts returns the slots taken and how many of them wait on their peer.
func (s *slotSet) counts() (held, waiting int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held.Len(), s.waiting
}

// wroteToPeer records that the server wrote to the peer: a read from now
// on waits for the peer's answer.
func (sl *handshakeSlot) wroteToPeer() {
	sl.set.mu.Lock()
	defer sl.set.mu.Unlock()
	sl.set.update(sl, func() { sl.wrote = true })
}

// readingPeer records that a read of the peer, with nothing left buffered
// above it, begins (true) or has returned (false).
func (sl *handshakeSlot) readingPeer(on bool) {
	sl.set.mu.Lock()
	defer sl.set.mu.Unlock()
	sl.set.update(sl, func() { sl.reading = on })
}

// update applies change to sl and keeps the set's count of waiting slots
// right; s.mu is held.
func (s *slotSet) update(sl *handshakeSlot, change func()) {
	if sl.el == nil {
		return // released or evicted: no longer counted
	}
	was := sl.waitingLocked()
	change()
	switch now := sl.waitingLocked(); {
	case now && !was:
		s.waiting++
	case was && !now:
		s.waiting--
	}
}

// waitingLocked reports whether sl's handshake waits on its peer: the
// server wrote its flight and is reading with nothing buffered.
func (sl *handshakeSlot) waitingLocked() bool { return sl.wrote && sl.reading }

// evictLocked takes the oldest slot waiting on its peer out of the set as
// gone and returns it as a victim, or nil if none is waiting. The scan
// passes over the working slots older than it, at most max of them; under a
// flood of stalled ClientHellos the oldest slot is the one.
func (s *slotSet) evictLocked() *victim {
	if s.waiting == 0 {
		return nil
	}
	for e := s.held.Front(); e != nil; e = e.Next() {
		if sl := e.Value.(*handshakeSlot); sl.waitingLocked() {
			s.removeLocked(sl)
			sl.gone = true
			return &victim{conn: sl.conn, ip: sl.ip}
		}
	}
	return nil
}

func (s *slotSet) removeLocked(sl *handshakeSlot) {
	if sl.waitingLocked() {
		s.waiting--
	}
	s.held.Remove(sl.el)
	sl.el = nil
}
