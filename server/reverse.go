package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/internal/pipe"
	"github.com/tunnel-dev/tunnel/internal/wire"
	"github.com/tunnel-dev/tunnel/netfilter"
)

// ServeExpose accepts the inbound connections of the expose named name
// (one of Config.Exposes) on ln until ctx is done, and carries each to a
// client that publishes the name, on a stream the server opens on that
// client's session (a reverse stream). A connection from an address not
// on the expose's allowlist, or past its per-address cap, is reset in
// Accept before any byte is read; one that finds no publisher live is
// reset at once (conn_rejected, reason no_publisher). ServeExpose closes
// ln. Once ctx is done it returns when the connections it accepted have
// ended: Serve's drain lets them finish, and those still open
// ShutdownTimeout after ctx ended are reset. Call it once per expose,
// beside Serve.
func (s *Server) ServeExpose(ctx context.Context, name string, ln net.Listener) error {
	x := s.exposes[name]
	if x == nil {
		ln.Close()
		return fmt.Errorf("%w: %q", errUnknownExpose, name)
	}
	ln = x.filter.WrapListener(ln) // the expose's own allowlist and per-address cap
	x.log.WithFields(logrus.Fields{audit.Event: audit.ListenerStarted, audit.Listen: ln.Addr().String()}).Info("expose listening")
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	// hard ends ShutdownTimeout after ctx: what is still carried then is reset.
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()
	stopHard := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(s.cfg.ShutdownTimeout, cancelHard)
		context.AfterFunc(hard, func() { t.Stop() })
	})
	defer stopHard()

	var wg sync.WaitGroup
	defer wg.Wait()
	return acceptEach(ctx, ln, x.log, &wg, nil, func(c net.Conn) { s.serveInbound(ctx, hard, x, c) })
}

// serveInbound carries one inbound connection of expose x: it picks a
// publisher (fewest streams first), opens a reverse stream toward it and
// waits for its status, trying the next publisher if the stream cannot be
// opened or is refused; with none left it resets c. It owns c.
func (s *Server) serveInbound(ctx, hard context.Context, x *expose, c net.Conn) {
	ip, _ := netfilter.PeerAddr(c.RemoteAddr())
	x.stats.inbound.Add(1)
	rules, ok := s.policy.Load().exposes[x.name]
	if !ok {
		x.filter.Reject(c, ip, ReasonExposeRemoved)
		return
	}
	s.activeStreams.Add(1)
	defer s.activeStreams.Add(-1)
	x.stats.active.Add(1)
	defer x.stats.active.Add(-1)
	tried := map[*publication]bool{}
	for {
		p, reason := s.pubs.pick(x.name, s.maxPerPublisher(rules), tried)
		if p == nil {
			x.filter.Reject(c, ip, reason)
			return
		}
		st, err := s.openReverse(ctx, p, c)
		if err == nil {
			s.carryReverse(hard, x, p, st, c)
			return
		}
		p.release()
		tried[p] = true
		s.reverseRefused(x, p, err)
	}
}

// openReverse opens a stream toward p's client, writes the connect header
// naming c's addresses and waits for the client's status, within
// DialTimeout plus HeaderTimeout (the client dials its target first). The
// stream it returns has been answered with status 0.
func (s *Server) openReverse(ctx context.Context, p *publication, c net.Conn) (*mux.Stream, error) {
	hdr, err := wire.AppendConnect(nil, wire.Connect{Name: p.name, Source: addrPort(c.RemoteAddr()), Dest: addrPort(c.LocalAddr())})
	if err != nil {
		return nil, err // unreachable: the name was checked when published
	}
	st, err := p.ss.mux.Open()
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { st.Reset() }) // shutdown: no wait for a status
	defer stop()
	st.SetWriteDeadline(time.Now().Add(statusWriteTimeout))
	if _, err := st.Write(hdr); err != nil {
		st.Reset()
		return nil, err
	}
	st.SetWriteDeadline(time.Time{})
	st.SetReadDeadline(time.Now().Add(s.cfg.DialTimeout + s.cfg.HeaderTimeout))
	err = wire.ReadStatus(st)
	st.SetReadDeadline(time.Time{})
	if _, ok := errors.AsType[*wire.StatusError](err); ok {
		st.Close() // the client closed its end after the status
		return nil, err
	} else if err != nil {
		st.Reset()
		return nil, err
	}
	return st, nil
}

// carryReverse copies between the inbound connection c and the reverse
// stream st both ways, with half-close and resets passed across as on a
// forward stream (internal/pipe), and logs stream_closed. It releases p's
// stream and closes c and st.
func (s *Server) carryReverse(hard context.Context, x *expose, p *publication, st *mux.Stream, c net.Conn) {
	defer p.release()
	stop := context.AfterFunc(hard, func() { st.Reset() }) // past the drain: cut
	defer stop()
	log := p.ss.log.WithFields(logrus.Fields{audit.Expose: x.name, audit.Direction: audit.DirectionReverse, audit.Inbound: c.RemoteAddr().String()})
	if log.Logger.IsLevelEnabled(logrus.DebugLevel) {
		log.WithField(audit.Event, audit.StreamOpened).Debug("reverse stream opened")
	}
	start := time.Now()
	p.ss.total.Add(1)
	// st first, as on a forward stream, so the session's byte counts read
	// the same way for both: from the client, and towards it.
	out, in, err := pipe.Run(st, c, pipe.Options{Idle: s.cfg.IdleTimeout, Memory: p.ss.mux.Budget(), Count: &p.ss.bytes})
	x.stats.carried(in, out)
	log.WithFields(audit.StreamClosedFields(in, out, start, err)).Info("stream closed")
}

// reverseRefused counts and logs a publisher that could not take an
// inbound connection: a refusal status, or a stream that failed before one.
func (s *Server) reverseRefused(x *expose, p *publication, err error) {
	code := wire.StatusBackendUnreachable
	fields := logrus.Fields{audit.Expose: x.name, audit.Direction: audit.DirectionReverse}
	if se, ok := errors.AsType[*wire.StatusError](err); ok {
		code = se.Code
	} else {
		fields[audit.Reason] = "no_status"
		fields[audit.Error] = err.Error()
	}
	x.stats.refusal(code)
	s.refusedLine(p.ss, code, fields, "publisher refused an inbound connection: "+code.String()+"; trying the next one")
}

// addrPort is a's address and port, or the zero value if a is not TCP.
func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.AddrPort()
	}
	return netip.AddrPort{}
}
