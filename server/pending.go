package server

import (
	"container/list"
	"net"
	"net/netip"
	"sync"
)

// The pending set holds the connections in their prologue: accepted, not
// yet handshaking (see accept.go). Each costs a goroutine and a socket, so
// the set is capped; a full set makes room by closing its oldest silent
// connection, never by refusing the newcomer. A real client leaves the set
// within a round trip of connecting, so under a flood of silent connections
// the oldest ones are the attacker's. The ClientHello bytes the set's
// connections buffer have a budget too: past it, the oldest unfinished
// ClientHellos go.

// pendingHelloBudget bounds the bytes all pending connections buffer for
// their ClientHellos (readClientHello's buffers): a real ClientHello takes
// about 2 KiB for one round trip, so 16 MiB is thousands of clients arriving
// at once, while without it MaxPending connections could each hold up to
// maxPrologue (72 KiB): 288 MiB at the default cap.
const pendingHelloBudget = 16 << 20

// pendingStage is how far a pending connection has come.
type pendingStage uint8

const (
	stageSilent pendingStage = iota // nothing from the client yet: waiting for a PROXY header or the first byte
	stageHello                      // the ClientHello has begun and is not complete
	numStages
)

// String names the stage as the metrics label does.
func (st pendingStage) String() string {
	if st == stageSilent {
		return "silent"
	}
	return "client_hello"
}

// pendingSet is the set of pending connections, at most max of them. The
// zero value is not usable; the Server makes one in New. Its methods are
// safe for concurrent use.
type pendingSet struct {
	max      int // connections
	maxBytes int // ClientHello buffers; zero means pendingHelloBudget

	mu     sync.Mutex
	stages [numStages]list.List // of *pendingConn, oldest first; guarded by mu
	bytes  int                  // sum of the connections' held; guarded by mu
	closed bool                 // Serve is shutting down; guarded by mu
}

// pendingConn is one connection in the pending set. Its owner (the
// goroutine running the prologue) reads from conn; the set may close conn
// from another goroutine, which makes that read fail.
type pendingConn struct {
	conn net.Conn // as accepted: closing it ends the prologue's reads

	// All guarded by the set's mu.
	ip    netip.Addr    // the client address known so far (an upstream's until its PROXY header names the client)
	stage pendingStage  //
	held  int           // bytes of its ClientHello buffer
	el    *list.Element // its place in stages[stage]; nil once it left the set
	gone  bool          // taken out by eviction or shutdown: the owner returns without a word
}

// victim is a connection evicted from the set, to be rejected by the caller
// (outside the set's lock: a reset is a syscall).
type victim struct {
	conn net.Conn
	ip   netip.Addr
}

// add puts c, from ip, into the set as silent. When the set is full it
// first takes out its oldest silent connection, or if none is silent the
// oldest in its ClientHello, and returns it for the caller to reject. It
// returns a nil *pendingConn, and closes c, once shutdown has run.
func (p *pendingSet) add(c net.Conn, ip netip.Addr) (*pendingConn, *victim) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.Close()
		return nil, nil
	}
	var out *victim
	if p.lenLocked() >= p.max {
		for st := range p.stages {
			if e := p.stages[st].Front(); e != nil {
				out = p.evictLocked(e.Value.(*pendingConn))
				break
			}
		}
	}
	pc := &pendingConn{conn: c, ip: ip, stage: stageSilent}
	pc.el = p.stages[stageSilent].PushBack(pc)
	p.mu.Unlock()
	return pc, out
}

// setAddr records the client address of pc once a PROXY header named it.
func (p *pendingSet) setAddr(pc *pendingConn, ip netip.Addr) {
	p.mu.Lock()
	pc.ip = ip
	p.mu.Unlock()
}

// started moves pc to the ClientHello stage, behind the others there: its
// first byte came.
func (p *pendingSet) started(pc *pendingConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pc.el == nil || pc.stage == stageHello {
		return
	}
	p.stages[pc.stage].Remove(pc.el)
	pc.stage = stageHello
	pc.el = p.stages[stageHello].PushBack(pc)
}

// hold records that pc's ClientHello buffer is now size bytes. When that
// takes the set past its byte budget, it takes out the oldest unfinished
// ClientHellos (pc itself, if it is the oldest) until it is within, and
// returns them for the caller to reject.
func (p *pendingSet) hold(pc *pendingConn, size int) []victim {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pc.el == nil {
		return nil
	}
	p.bytes += size - pc.held
	pc.held = size
	budget := p.maxBytes
	if budget == 0 {
		budget = pendingHelloBudget
	}
	var out []victim
	for p.bytes > budget {
		e := p.stages[stageHello].Front()
		if e == nil {
			break
		}
		out = append(out, *p.evictLocked(e.Value.(*pendingConn)))
	}
	return out
}

// leave takes pc out of the set. It reports false if pc was evicted or shut
// down first, in which case its owner must stop. It may be called again.
func (p *pendingSet) leave(pc *pendingConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pc.el != nil {
		p.removeLocked(pc)
	}
	return !pc.gone
}

// isGone reports whether pc was evicted or shut down.
func (p *pendingSet) isGone(pc *pendingConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return pc.gone
}

// shutdown closes every pending connection and makes add refuse new ones:
// nothing waits for a first byte past the end of Serve.
func (p *pendingSet) shutdown() {
	p.mu.Lock()
	p.closed = true
	var conns []net.Conn
	for st := range p.stages {
		for e := p.stages[st].Front(); e != nil; e = p.stages[st].Front() {
			pc := e.Value.(*pendingConn)
			p.removeLocked(pc)
			pc.gone = true
			conns = append(conns, pc.conn)
		}
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// counts returns how many connections are in each stage now, and the bytes
// their ClientHello buffers hold.
func (p *pendingSet) counts() (silent, hello, bytes int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stages[stageSilent].Len(), p.stages[stageHello].Len(), p.bytes
}

func (p *pendingSet) lenLocked() int {
	n := 0
	for st := range p.stages {
		n += p.stages[st].Len()
	}
	return n
}

func (p *pendingSet) removeLocked(pc *pendingConn) {
	p.stages[pc.stage].Remove(pc.el)
	pc.el = nil
	p.bytes -= pc.held
	pc.held = 0
}

// evictLocked takes pc out of the set as gone and returns it as a victim.
func (p *pendingSet) evictLocked(pc *pendingConn) *victim {
	p.removeLocked(pc)
	pc.gone = true
	return &victim{conn: pc.conn, ip: pc.ip}
}
