package netfilter

import (
	"net"
	"net/netip"
	"sync"
)

// ReasonConnLimit is the rejection reason for a peer address that already
// holds FilterConfig.MaxConnsPerAddr connections.
const ReasonConnLimit = "conn_limit"

// DefaultMaxConnsPerAddr is the per-address cap of the server's flag.
const DefaultMaxConnsPerAddr = 64

// Hold takes one of ip's connection slots for c and returns c wrapped so
// that closing it gives the slot back (once, however often it is closed).
// It reports false, taking nothing, when ip already holds
// FilterConfig.MaxConnsPerAddr connections; the caller then rejects c with
// ReasonConnLimit. With no cap it returns c unchanged. The wrapper forwards
// SetLinger and CloseWrite to c, so Reject and half-close still work.
func (f *Filter) Hold(c net.Conn, ip netip.Addr) (net.Conn, bool) {
	if f.maxConns <= 0 {
		return c, true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns[ip] >= f.maxConns {
		return nil, false
	}
	f.conns[ip]++
	return &heldConn{Conn: c, f: f, ip: ip}, true
}

func (f *Filter) release(ip netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns[ip] <= 1 {
		delete(f.conns, ip) // the table holds only addresses with open conns
		return
	}
	f.conns[ip]--
}

// heldConn is a connection that holds a per-address slot until closed.
type heldConn struct {
	net.Conn
	f    *Filter
	ip   netip.Addr
	once sync.Once
}

func (h *heldConn) Close() error {
	err := h.Conn.Close()
	h.once.Do(func() { h.f.release(h.ip) })
	return err
}

// SetLinger forwards to the socket, for Reject.
func (h *heldConn) SetLinger(sec int) error { return setLinger(h.Conn, sec) }

// CloseWrite forwards to the socket, for half-close.
func (h *heldConn) CloseWrite() error { return closeWrite(h.Conn) }

// NetConn returns the wrapped connection.
func (h *heldConn) NetConn() net.Conn { return h.Conn }
