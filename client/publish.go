package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/logthrottle"
	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/internal/pipe"
	"github.com/tunnel-dev/tunnel/internal/wire"
	"github.com/tunnel-dev/tunnel/netfilter"
)

// Reverse tunnels, the client's end (docs/PROTOCOL.md section 7): the
// client publishes names over its session, one publish stream each, and
// the server opens a stream toward it for each inbound connection of an
// expose of that name; the client dials the name's target and answers with
// a status, then copies both ways as on a forward stream.

// DefaultPublishMaxStreams is the default of Config.PublishMaxStreams.
const DefaultPublishMaxStreams = 1024

// publishRefusalLogInterval spaces the publish_refused lines of one name
// and status: a refused publication is retried with backoff, for ever.
const publishRefusalLogInterval = time.Minute

// Publish is a service that sits behind the client, published under Name:
// the server's expose of that name carries its inbound connections here,
// and the client dials Target for each.
type Publish struct {
	Name   string // a wire route name: the server's expose
	Target string // "host:port" (resolved at dial time) or "unix:/path"

	// ProxyV2 sends Target a PROXY protocol v2 header before any byte,
	// naming the inbound connection's address on the server and the
	// expose's address it connected to, so that the service sees the real
	// client. Target must expect it.
	ProxyV2 bool
}

// The one option of a publication: ",proxy-v2" after the target.
const optProxyV2 = "proxy-v2"

// ParsePublish parses "NAME=TARGET[,proxy-v2]", the client's --publish,
// where TARGET is "host:port" or "unix:/absolute/path". The host is not
// resolved here.
func ParsePublish(s string) (Publish, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok {
		return Publish{}, fmt.Errorf("client: publish %q: want NAME=HOST:PORT or NAME=unix:/PATH", s)
	}
	target, opts, hasOpts := strings.Cut(rest, ",")
	p := Publish{Name: strings.TrimSpace(name), Target: strings.TrimSpace(target)}
	if hasOpts {
		for _, o := range strings.Split(opts, ",") {
			if o = strings.TrimSpace(o); o != optProxyV2 {
				return Publish{}, fmt.Errorf("client: publish %q: unknown option %q (known: %s)", s, o, optProxyV2)
			}
			p.ProxyV2 = true
		}
	}
	if err := p.check(); err != nil {
		return Publish{}, fmt.Errorf("client: publish %q: %w", s, err)
	}
	return p, nil
}

func (p Publish) check() error {
	if err := wire.CheckRouteName(p.Name); err != nil {
		return err
	}
	if path, ok := strings.CutPrefix(p.Target, "unix:"); ok {
		if !strings.HasPrefix(path, "/") {
			return fmt.Errorf("unix socket path %q is not absolute", path)
		}
		return nil
	}
	host, port, err := net.SplitHostPort(p.Target)
	switch {
	case err != nil:
		return fmt.Errorf("target %q: %w", p.Target, err)
	case host == "":
		return fmt.Errorf("target %q has no host", p.Target)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("target %q: port %q is not a number from 1 to 65535", p.Target, port)
	}
	return nil
}

// network returns the dial network and address of the target.
func (p Publish) network() (string, string) {
	if path, ok := strings.CutPrefix(p.Target, "unix:"); ok {
		return "unix", path
	}
	return "tcp", p.Target
}

// checkPublish checks a set of publications, for New and Reload alike:
// each valid, no name twice. Errors are *FieldError.
func checkPublish(ps []Publish) error {
	seen := map[string]bool{}
	for _, p := range ps {
		if err := p.check(); err != nil {
			return &FieldError{"Publish", fmt.Errorf("publish %s=%s: %w", p.Name, p.Target, err)}
		}
		if seen[p.Name] {
			return &FieldError{"Publish", fmt.Errorf("name %q published twice", p.Name)}
		}
		seen[p.Name] = true
	}
	return nil
}

// PublicationStats are one publication's state and counters.
type PublicationStats struct {
	Target string
	// Live: the server accepted the publication on the current session.
	Live bool
	// Refused is the status the server last refused it with ("forbidden",
	// "unknown_route", "bad_header" when the server predates reverse
	// tunnels, ...), or "" once accepted.
	Refused string
	// Streams counts the server's streams for it that reached the target;
	// Failed those refused (target unreachable, header); Active those open.
	Streams, Failed uint64
	Active          int64
}

// pubCounters are one name's live counters.
type pubCounters struct {
	live            atomic.Int32 // sessions that hold the publication live
	refused         atomic.Pointer[string]
	streams, failed atomic.Uint64
	active          atomic.Int64
}

// publisher keeps the client's publications live on its sessions: one
// announcer per name and session, and the accept loop of the server's
// streams on each session. Safe for concurrent use.
type publisher struct {
	c *Client

	mu       sync.Mutex
	set      map[string]Publish           // the publications now; guarded by mu
	sessions map[*mux.Session]*pubSession // sessions published by the keeper; guarded by mu
	counters map[string]*pubCounters      // by name, kept across reloads; guarded by mu

	refuseLog *logthrottle.Throttle[refusedKey] // publish_refused lines
	streamLog *logthrottle.Throttle[refusedKey] // stream_refused lines of the server's streams
}

// refusedKey is what publish_refused lines are throttled by.
type refusedKey struct {
	name   string
	status wire.Status
}

// pubSession is the publications of one session.
type pubSession struct {
	ks     *kept           // the session, with its log fields and counters
	ctx    context.Context // ends when the keeper stops handing the session out
	cancel context.CancelFunc
	names  map[string]context.CancelFunc // an announcer per name; guarded by publisher.mu
	wg     *sync.WaitGroup               // Client.Run's
}

func newPublisher(c *Client, ps []Publish) *publisher {
	pb := &publisher{c: c, set: map[string]Publish{}, sessions: map[*mux.Session]*pubSession{}, counters: map[string]*pubCounters{},
		refuseLog: &logthrottle.Throttle[refusedKey]{Interval: publishRefusalLogInterval, Max: 256},
		streamLog: &logthrottle.Throttle[refusedKey]{Interval: 10 * time.Second, Max: 256}}
	for _, p := range ps {
		pb.set[p.Name] = p
		pb.counters[p.Name] = new(pubCounters)
	}
	return pb
}

// attach starts serving s, which the keeper just made current: the accept
// loop of the server's streams (until s ends) and an announcer for each
// publication (until detach). Goroutines join wg.
func (pb *publisher) attach(ctx context.Context, ks *kept, wg *sync.WaitGroup) {
	s := ks.Session
	pctx, cancel := context.WithCancel(ctx)
	ps := &pubSession{ks: ks, ctx: pctx, cancel: cancel, names: map[string]context.CancelFunc{}, wg: wg}
	pb.mu.Lock()
	pb.sessions[s] = ps
	for name := range pb.set {
		pb.startLocked(s, ps, name)
	}
	pb.mu.Unlock()
	wg.Go(func() { pb.acceptLoop(ctx, ks, wg) })
}

// detach withdraws s's publications: the keeper no longer hands s out
// (it ended, or the server asked it to go away). Streams already carried
// on s go on.
func (pb *publisher) detach(s *mux.Session) {
	pb.mu.Lock()
	ps := pb.sessions[s]
	delete(pb.sessions, s)
	pb.mu.Unlock()
	if ps != nil {
		ps.cancel()
	}
}

// update makes the publications ps (a reload): announcers start for new
// names and stop for names gone; a changed target or option takes effect
// with the next inbound connection.
func (pb *publisher) update(ps []Publish) {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	next := map[string]Publish{}
	for _, p := range ps {
		next[p.Name] = p
		if pb.counters[p.Name] == nil {
			pb.counters[p.Name] = new(pubCounters)
		}
	}
	for s, sp := range pb.sessions {
		for name, stop := range sp.names {
			if _, ok := next[name]; !ok {
				stop()
				delete(sp.names, name)
			}
		}
		for name := range next {
			if _, ok := pb.set[name]; !ok {
				pb.startLocked(s, sp, name)
			}
		}
	}
	for name := range pb.set {
		if _, ok := next[name]; !ok {
			delete(pb.counters, name)
		}
	}
	pb.set = next
}

// startLocked starts the announcer of name on s. pb.mu is held.
func (pb *publisher) startLocked(s *mux.Session, ps *pubSession, name string) {
	ctx, cancel := context.WithCancel(ps.ctx)
	ps.names[name] = cancel
	ps.wg.Go(func() { pb.announce(ctx, ps.ks, name) })
}

// lookup returns the publication of name now, with its counters.
func (pb *publisher) lookup(name string) (Publish, *pubCounters, bool) {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	p, ok := pb.set[name]
	return p, pb.counters[name], ok
}

// announce keeps name published on s until ctx ends (the name was
// unpublished by a reload, or the keeper let go of s) or s ends: it opens
// a publish stream, and while the server keeps it open the publication is
// live. A refusal is retried with backoff, except bad_header (a server
// that predates reverse tunnels), which is retried on the next session.
func (pb *publisher) announce(ctx context.Context, ks *kept, name string) {
	c, s := pb.c, ks.Session
	for attempt := 0; ctx.Err() == nil && !s.IsClosed(); attempt++ {
		p, pc, ok := pb.lookup(name)
		if !ok {
			return
		}
		log := c.log.WithFields(logrus.Fields{audit.Expose: name, audit.Backend: p.Target, audit.SessionID: ks.id})
		st, err := c.openPublish(s, name)
		if goingAway(err) {
			// The server sent GoAway (it withdrew our publications with it):
			// the keeper dials a new session, and attach publishes there.
			c.keeper.Retire(s)
			return
		}
		if err == nil {
			attempt = 0
			pb.hold(ctx, log, pc, st)
		} else if se, ok := errors.AsType[*wire.StatusError](err); ok {
			pb.refused(log, pc, name, se.Code)
			if se.Code == wire.StatusBadHeader {
				return
			}
		} else if s.IsClosed() || ctx.Err() != nil {
			return
		} else {
			log.WithFields(logrus.Fields{audit.Event: audit.PublishRefused, audit.Reason: "no_status", audit.Error: err.Error()}).
				Warn("publication got no answer from the server; retrying")
		}
		delay := c.keeper.backoff(attempt)
		select {
		case <-time.After(delay):
		case <-ctx.Done():
		case <-s.CloseChan():
		}
	}
}

// goingAway reports whether err is a session's refusal of a new stream:
// the server sent GoAway, the stream IDs ran out, or the session ended.
func goingAway(err error) bool {
	return errors.Is(err, yamux.ErrRemoteGoAway) || errors.Is(err, yamux.ErrStreamsExhausted) || errors.Is(err, yamux.ErrSessionShutdown)
}

// openPublish opens a publish stream for name on s and reads the server's
// status, within ConnectTimeout. On status 0 it returns the live stream.
func (c *Client) openPublish(s *mux.Session, name string) (*mux.Stream, error) {
	hdr, err := wire.AppendPublish(nil, name)
	if err != nil {
		return nil, err // unreachable: checked by New and Reload
	}
	st, err := s.Open()
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(c.cfg.ConnectTimeout)
	st.SetDeadline(deadline)
	if _, err = st.Write(hdr); err == nil {
		err = wire.ReadStatus(st)
	}
	st.SetDeadline(time.Time{})
	if err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// hold keeps a live publication until the server withdraws it, the session
// ends or ctx does, and logs publish_added and publish_removed around it.
func (pb *publisher) hold(ctx context.Context, log *logrus.Entry, pc *pubCounters, st *mux.Stream) {
	defer st.Close()
	pc.refused.Store(nil)
	pc.live.Add(1)
	defer pc.live.Add(-1)
	since := time.Now()
	log.WithField(audit.Event, audit.PublishAdded).Info("publication live: the server carries the expose's connections here")
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	var b [1]byte
	n, err := st.Read(b[:]) // nothing comes on a publish stream: this ends with it
	reason := "session_closed"
	switch {
	case ctx.Err() != nil:
		reason = "unpublished"
	case n > 0:
		reason = "protocol_error"
		st.Reset()
	case errors.Is(err, io.EOF):
		reason = "withdrawn_by_server"
	}
	log.WithFields(logrus.Fields{audit.Event: audit.PublishRemoved, audit.Reason: reason, audit.DurationMS: time.Since(since).Milliseconds()}).
		Info("publication removed")
}

// refused records and logs (throttled per name and status) a refusal.
func (pb *publisher) refused(log *logrus.Entry, pc *pubCounters, name string, code wire.Status) {
	s := code.String()
	pc.refused.Store(&s)
	n, _, ok := pb.refuseLog.Hit(refusedKey{name, code})
	if !ok {
		return
	}
	fields := logrus.Fields{audit.Event: audit.PublishRefused, audit.Status: s}
	if n > 1 {
		fields[audit.Count] = n
	}
	msg := "server refused the publication: " + s + "; retrying with backoff"
	switch code {
	case wire.StatusBadHeader:
		fields[audit.Reason] = "server_unsupported"
		msg = "server refused the publication: it does not speak reverse tunnels (bad_header to a version-2 header); upgrade it. Retrying on the next session"
		log.WithFields(fields).Error(msg)
		return
	case wire.StatusForbidden:
		fields[audit.Reason] = "not_a_publisher"
		msg = "server refused the publication: this certificate is not among the expose's publishers; retrying with backoff"
	case wire.StatusUnknownRoute:
		fields[audit.Reason] = "unknown_expose"
		msg = "server refused the publication: it exposes no such name; retrying with backoff"
	}
	log.WithFields(fields).Warn(msg)
}

// acceptLoop serves the streams the server opens on ks until it ends.
func (pb *publisher) acceptLoop(ctx context.Context, ks *kept, wg *sync.WaitGroup) {
	for {
		st, err := ks.Accept()
		if err != nil {
			return
		}
		wg.Go(func() { pb.serveReverse(ctx, ks, st) })
	}
}

// serveReverse serves one stream the server opened: the connect header,
// the publication, the target dial (and its PROXY header), the status,
// then the copy, counted in ks's streams and bytes. It closes st.
func (pb *publisher) serveReverse(ctx context.Context, ks *kept, st *mux.Stream) {
	c := pb.c
	defer st.Close()
	slog := c.log.WithFields(logrus.Fields{audit.Direction: audit.DirectionReverse, audit.SessionID: ks.id})
	st.SetReadDeadline(time.Now().Add(c.cfg.ConnectTimeout))
	hdr, err := wire.ReadConnect(st)
	st.SetReadDeadline(time.Time{})
	if err != nil {
		pb.reverseRefused(st, slog, "", nil, wire.StatusBadHeader, err)
		return
	}
	log := slog.WithFields(logrus.Fields{audit.Expose: hdr.Name, audit.Inbound: hdr.Source.String()})
	p, pc, ok := pb.lookup(hdr.Name)
	if !ok {
		pb.reverseRefused(st, log, hdr.Name, nil, wire.StatusUnknownRoute, nil)
		return
	}
	log = log.WithField(audit.Backend, p.Target)
	target, err := c.dialTarget(ctx, p, hdr)
	if err != nil {
		pb.reverseRefused(st, log, hdr.Name, pc, wire.StatusBackendUnreachable, err)
		return
	}
	st.SetWriteDeadline(time.Now().Add(c.cfg.ConnectTimeout))
	err = wire.WriteStatus(st, wire.StatusOK)
	st.SetWriteDeadline(time.Time{})
	if err != nil {
		target.Close()
		return // the session is going away
	}
	pc.streams.Add(1)
	pc.active.Add(1)
	defer pc.active.Add(-1)
	ks.streams.Add(1)
	defer ks.streams.Add(-1)
	if log.Logger.IsLevelEnabled(logrus.DebugLevel) {
		log.WithField(audit.Event, audit.StreamOpened).Debug("reverse stream opened")
	}
	start := time.Now()
	// target first, as a forward copy has its local side first, so the
	// session's byte counts read the same way for both: towards the
	// server, and back.
	out, in, err := pipe.Run(target, st, pipe.Options{Idle: c.cfg.IdleTimeout, Memory: c.memory, Count: &ks.bytes})
	log.WithFields(audit.StreamClosedFields(in, out, start, err)).Info("stream closed")
}

// dialTarget connects to p's target within DialTimeout and, for a ProxyV2
// publication, writes the PROXY v2 header naming the inbound connection.
func (c *Client) dialTarget(ctx context.Context, p Publish, hdr wire.Connect) (net.Conn, error) {
	network, addr := p.network()
	d := net.Dialer{Timeout: c.cfg.DialTimeout, KeepAliveConfig: tcpKeepAlive}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil || !p.ProxyV2 {
		return conn, err
	}
	var src, dst net.Addr // nil: the server did not know them (UNSPEC)
	if hdr.Source.IsValid() && hdr.Dest.IsValid() {
		src, dst = net.TCPAddrFromAddrPort(hdr.Source), net.TCPAddrFromAddrPort(hdr.Dest)
	}
	if err := netfilter.WriteProxyHeader(conn, 2, src, dst, c.cfg.DialTimeout); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// reverseRefused answers a server's stream with code and logs
// stream_refused with the direction, at most one line per name and status
// every 10 s (with the count it stands for): inbound connections come as
// fast as their senders like.
func (pb *publisher) reverseRefused(st *mux.Stream, log *logrus.Entry, name string, pc *pubCounters, code wire.Status, cause error) {
	if pc != nil {
		pc.failed.Add(1)
	}
	st.SetWriteDeadline(time.Now().Add(pb.c.cfg.ConnectTimeout))
	_ = wire.WriteStatus(st, code) // the server may be gone; the line stands either way
	n, _, ok := pb.streamLog.Hit(refusedKey{name, code})
	if !ok {
		return
	}
	fields := logrus.Fields{audit.Event: audit.StreamRefused, audit.Status: code.String()}
	if n > 1 {
		fields[audit.Count] = n
	}
	if cause != nil {
		fields[audit.Error] = cause.Error()
	}
	log.WithFields(fields).Warn("refused the server's stream: " + code.String())
}

// stats returns the publications' state and counters.
func (pb *publisher) stats() map[string]PublicationStats {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	out := make(map[string]PublicationStats, len(pb.set))
	for name, p := range pb.set {
		pc := pb.counters[name]
		st := PublicationStats{Target: p.Target, Live: pc.live.Load() > 0, Streams: pc.streams.Load(), Failed: pc.failed.Load(), Active: pc.active.Load()}
		if r := pc.refused.Load(); r != nil {
			st.Refused = *r
		}
		out[name] = st
	}
	return out
}
