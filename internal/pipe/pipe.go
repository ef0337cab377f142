// Package pipe copies bytes both ways between two connections and passes
// half-close across; Run takes ownership of both connections and closes them.
package pipe

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrIdle is returned (wrapped) by Run when no byte moved in either direction
// for the idle duration.
var ErrIdle = errors.New("pipe: idle timeout")

// A direction reads into a small buffer and moves to a large pooled one only
// while reads keep filling the small one, so an idle connection (most of
// them, when thousands are open) holds smallSize per direction while it
// waits, and a bulk transfer copies bufSize at a time: over a tunnel stream
// that is one yamux frame, one TLS write, per bufSize (fewer, larger frames
// and syscalls; 128 KiB measured better than 64 and as good as 256).
const (
	smallSize = 512
	bufSize   = 128 << 10
)

var (
	smallPool = sync.Pool{New: func() any {
		b := make([]byte, smallSize)
		return &b
	}}
	bufPool = sync.Pool{New: func() any {
		b := make([]byte, bufSize)
		return &b
	}}
)

// Memory is what Run takes its large copy buffers out of (a session's or the
// process's memory budget): a direction that cannot have one copies through
// its small buffer instead. Take reports whether n more bytes may be held;
// Free gives them back. Safe for concurrent use.
type Memory interface {
	Take(n int64) bool
	Free(n int64)
}

// Options are Run's settings; the zero value means no idle limit and
// uncounted buffers.
type Options struct {
	// Idle, if positive, ends the copy once no byte moved either way for
	// this long (see Run).
	Idle time.Duration
	// Memory, if set, counts the large copy buffers.
	Memory Memory
	// Count, if set, has the bytes added to it as they are written, for
	// whoever watches a copy while it runs (the admin status); it may be
	// shared by several copies.
	Count *Counters
}

// Counters are the bytes written each way by the copies that share them:
// AToB to b, BToA to a (Run's names). Safe for concurrent use.
type Counters struct {
	AToB, BToA atomic.Int64
}

// Run copies a->b and b->a until both directions end, then closes a and b.
// It takes ownership of both conns: they are closed when Run returns.
//
// When one direction reaches EOF, Run half-closes its destination (with
// CloseWrite, if the conn has CloseWrite() error; a conn without it is left
// alone until the end) and keeps copying the other direction. When a
// direction ends in any other way (a reset, a timeout, a failed write or
// CloseWrite), Run closes both conns at once, so the other direction ends
// too. When it ends with a reset (an error satisfying
// errors.Is(err, syscall.ECONNRESET) or EPIPE), Run resets both conns
// instead (see abort), so an abortive close at one end reaches the other
// end as a reset, not as a clean EOF.
//
// If o.Idle > 0, the copy ends with an error satisfying errors.Is(err,
// ErrIdle) once no byte has moved in either direction for that long; a quiet
// direction does not time out while the other is busy. Run uses read and
// write deadlines on both conns for this and overwrites any the caller set.
// o.Idle <= 0 means no idle limit and no deadlines, except that Run clears
// the read deadline of a conn that is not a socket after reading what it had
// buffered (see readMore).
//
// A conn that is a Lender (a mux.Stream) is written on from its own
// buffer; from any other conn Run reads into its own buffers, counted by
// o.Memory.
//
// Run blocks until both directions end, and returns the bytes written to b
// (aToB) and to a (bToA), and the first error that is not io.EOF or
// net.ErrClosed (nil when both directions ended with EOF).
func Run(a, b net.Conn, o Options) (aToB, bToA int64, err error) {
	p := &pipe{a: a, b: b, idle: o.Idle, mem: o.Memory, start: time.Now()}
	var ab, ba *atomic.Int64
	if o.Count != nil {
		ab, ba = &o.Count.AToB, &o.Count.BToA
	}
	var wg sync.WaitGroup
	wg.Go(func() { aToB = p.direction(a, b, "a->b", ab) })
	bToA = p.direction(b, a, "b->a", ba)
	wg.Wait()
	p.closeBoth()
	return aToB, bToA, p.err
}

// pipe is the state shared by Run's two directions.
type pipe struct {
	a, b  net.Conn
	idle  time.Duration
	mem   Memory       // or nil
	start time.Time    // origin of last, for monotonic readings
	last  atomic.Int64 // time.Since(start) at the last byte moved, in ns

	errOnce   sync.Once
	err       error // the first error; written once by errOnce, read after both directions end
	closeOnce sync.Once
}

// touch records that bytes moved now.
func (p *pipe) touch() { p.last.Store(int64(time.Since(p.start))) }

// deadline is when the copy becomes idle if nothing moves before it.
func (p *pipe) deadline() time.Time {
	return p.start.Add(time.Duration(p.last.Load()) + p.idle)
}

// fail records err (unless it is net.ErrClosed or a first error is already
// recorded) and closes both conns so the other direction ends too. When err
// is a reset, it resets both first, so the reset reaches the other end.
func (p *pipe) fail(err error) {
	if !errors.Is(err, net.ErrClosed) {
		p.errOnce.Do(func() { p.err = err })
	}
	if isReset(err) {
		p.closeOnce.Do(func() {
			abort(p.a)
			abort(p.b)
			_ = p.a.Close()
			_ = p.b.Close()
		})
	}
	p.closeBoth()
}

// isReset reports whether err says a peer ended its connection abortively:
// a reset (a TCP RST, a stream's ErrReset from internal/mux), or a write to
// a peer that had already gone (EPIPE). isPlatformReset adds the platform's
// own codes for these (Windows reports WSAECONNRESET, not ECONNRESET).
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || isPlatformReset(err)
}

// abort makes c's peer see a reset rather than a clean end, as stunnel
// does: a conn with Reset() error (a stream) is reset; otherwise the socket
// under c, found through NetConn wrappers (tls.Conn and our listeners'),
// gets SO_LINGER 0 and is closed at once, so no TLS close_notify goes
// before the RST. A conn that has neither (a unix socket) is only closed
// by the caller.
func abort(c net.Conn) {
	for {
		switch x := c.(type) {
		case interface{ Reset() error }:
			_ = x.Reset()
			return
		case interface{ SetLinger(int) error }:
			if x.SetLinger(0) == nil {
				_ = c.Close()
			}
			return
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return
		}
	}
}

// getBig returns a large buffer, or nil if Memory has no room for one.
func (p *pipe) getBig() *[]byte {
	if p.mem != nil && !p.mem.Take(bufSize) {
		return nil
	}
	return bufPool.Get().(*[]byte)
}

func (p *pipe) putBig(b *[]byte) {
	bufPool.Put(b)
	if p.mem != nil {
		p.mem.Free(bufSize)
	}
}

func (p *pipe) closeBoth() {
	p.closeOnce.Do(func() {
		_ = p.a.Close() // errors from Close on conns we are discarding change nothing
		_ = p.b.Close()
	})
}

// A Lender is a conn that can lend the bytes it received where they are,
// so that Run writes them on without copying them into a buffer of its own
// first (a mux.Stream: the bytes sit in the stream's receive buffer). Lend
// waits as Read does and returns up to max bytes, valid until Return says
// how many were written; Read and Lend are not called in between.
type Lender interface {
	Lend(max int) ([]byte, error)
	Return(n int)
}

// A Sinker is a Lender that can also hand its bytes, as they arrive and
// while no Lend holds them, to a function that must not block, which
// returns how many it wrote on (a mux.Stream: on its session's reader).
// Run gives it one when the destination is a socket it can write to at
// once, and takes it back when the direction ends.
type Sinker interface {
	SetSink(fn func([]byte) int)
}

// direction copies src to dst until src reaches EOF or something fails, and
// returns the bytes written to dst, which it also adds to count if set.
func (p *pipe) direction(src, dst net.Conn, name string, count *atomic.Int64) (total int64) {
	in := p.source(src, dst, count)
	var n int64
	defer func() {
		in.close()
		total = n + in.sunk()
	}()
	for {
		b, rerr := in.next()
		if len(b) > 0 {
			nw, werr := p.write(dst, b)
			in.done(nw)
			n += int64(nw)
			if count != nil {
				count.Add(int64(nw))
			}
			if errors.Is(werr, ErrIdle) {
				p.fail(werr)
				return n
			}
			if werr != nil {
				p.fail(fmt.Errorf("pipe: %s: write: %w", name, werr))
				return n
			}
		}
		switch {
		case rerr == nil:
		case errors.Is(rerr, ErrIdle):
			p.fail(rerr)
			return n
		case errors.Is(rerr, io.EOF):
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				if err := cw.CloseWrite(); err != nil {
					p.fail(fmt.Errorf("pipe: %s: close write: %w", name, err))
				}
			}
			return n
		default:
			p.fail(fmt.Errorf("pipe: %s: read: %w", name, rerr))
			return n
		}
	}
}

// source is where a direction's bytes come from: next returns the next
// bytes to write, done says how many of them were written, sunk how many
// reached the destination without them (a Sinker's).
type source interface {
	next() ([]byte, error)
	done(n int)
	sunk() int64
	close()
}

func (p *pipe) source(src, dst net.Conn, count *atomic.Int64) source {
	if l, ok := src.(Lender); ok {
		s := &lentSource{p: p, conn: src, l: l, count: count}
		if sk, ok := src.(Sinker); ok {
			if w := tryWriter(dst); w != nil {
				s.sinker, s.try = sk, w
			}
		}
		return s
	}
	small := smallPool.Get().(*[]byte)
	return &bufSource{p: p, conn: src, small: small, buf: *small}
}

// lentSource writes on the bytes a Lender lends: no copy, no buffer. For a
// Sinker, once its first lend is back (a stream whose status the Lender
// checks at its first Lend is past it), the Sinker's own goroutine writes
// what it can to the destination at once, so this one is woken only for
// what does not fit.
type lentSource struct {
	p      *pipe
	conn   net.Conn
	l      Lender
	out    bool // a lend is out
	count  *atomic.Int64
	sinker Sinker           // or nil
	try    func([]byte) int // a non-blocking write to the destination, for sinker
	sinkOn bool             // sinker has the sink
	nsunk  atomic.Int64     // bytes the sink wrote
}

func (s *lentSource) next() ([]byte, error) {
	var b []byte
	_, err := s.p.read(s.conn, func() (int, error) {
		var err error
		b, err = s.l.Lend(bufSize)
		return len(b), err
	})
	s.out = len(b) > 0
	return b, err
}

func (s *lentSource) done(n int) {
	s.l.Return(n)
	s.out = false
	if s.sinker != nil && !s.sinkOn && n > 0 {
		s.sinkOn = true
		s.sinker.SetSink(s.sink)
	}
}

// sink is the Sinker's: it runs on the Sinker's goroutine, never blocks,
// and counts what it wrote as the direction would.
func (s *lentSource) sink(b []byte) int {
	n := s.try(b)
	if n > 0 {
		s.p.touch()
		s.nsunk.Add(int64(n))
		if s.count != nil {
			s.count.Add(int64(n))
		}
	}
	return n
}

func (s *lentSource) sunk() int64 { return s.nsunk.Load() }

func (s *lentSource) close() {
	if s.sinkOn {
		s.sinker.SetSink(nil)
	}
	if s.out {
		s.l.Return(0)
	}
}

// bufSource reads into a small buffer and moves to a large pooled one only
// while reads keep filling the small one (see smallSize).
type bufSource struct {
	p     *pipe
	conn  net.Conn
	small *[]byte
	big   *[]byte // held only while reads fill the small buffer or more
	buf   []byte  // *small or *big
	nr    int     // bytes of the last read
}

func (s *bufSource) next() ([]byte, error) {
	nr, rerr := s.p.read(s.conn, func() (int, error) { return s.conn.Read(s.buf) })
	if s.big == nil && nr == smallSize && rerr == nil {
		// More may be waiting: move to the large buffer (if Memory lends
		// one) and take what has arrived, so a message a little larger
		// than the small buffer goes out in one write (one yamux frame,
		// one TLS record), not two.
		if s.big = s.p.getBig(); s.big != nil {
			s.buf = *s.big
			copy(s.buf, (*s.small)[:nr])
			m, err := readMore(s.conn, s.buf[nr:])
			nr += m
			if m > 0 {
				s.p.touch()
			}
			rerr = err
		}
	}
	if s.big != nil && rerr == nil && nr > 0 && !isSocket(s.conn) {
		// A TLS connection returns one record per Read: gather what it
		// has already received, so one write to the other side carries
		// several records, not 16 KiB.
		for nr < len(s.buf) {
			m, err := readMore(s.conn, s.buf[nr:])
			nr += m
			if err != nil {
				rerr = err
			}
			if m == 0 || err != nil {
				break
			}
			s.p.touch()
		}
	}
	s.nr = nr
	return s.buf[:nr], rerr
}

// isSocket reports whether c reads straight from a socket, which returns
// all it has received in one read.
func isSocket(c net.Conn) bool {
	_, ok := c.(syscall.Conn)
	return ok
}

func (s *bufSource) done(int) {
	// The bytes are written: a short read means the burst is over.
	if s.big != nil && s.nr < smallSize {
		s.p.putBig(s.big)
		s.big = nil
		s.buf = *s.small
	}
}

func (s *bufSource) sunk() int64 { return 0 }

func (s *bufSource) close() {
	if s.big != nil {
		s.p.putBig(s.big)
	}
	smallPool.Put(s.small)
}

// longAgo is a deadline that has passed: a Read under it returns only what
// the conn has already received.
var longAgo = time.Unix(1, 0)

// readMoreDeadline reads into b what src has already buffered, under a read
// deadline that has passed, and then clears the deadline. It is readMore's
// path for conns that are not sockets (a yamux stream, a TLS conn), and for
// every conn where the platform has no non-blocking read of the socket (see
// readmore_other.go). It returns the error of that read unless it is a
// timeout (nothing was there); an error it hides, the next Read reports.
func readMoreDeadline(src net.Conn, b []byte) (int, error) {
	if err := src.SetReadDeadline(longAgo); err != nil {
		return 0, nil
	}
	n, err := src.Read(b)
	if derr := src.SetReadDeadline(time.Time{}); err == nil && derr != nil {
		err = derr
	}
	if err != nil && isTimeout(err) {
		err = nil
	}
	return n, err
}

// read runs read, a read from src. With an idle limit, a read deadline
// that passes while the other direction moved bytes is pushed back; one that
// passes with nothing moving anywhere is an ErrIdle.
func (p *pipe) read(src net.Conn, read func() (int, error)) (int, error) {
	if p.idle <= 0 {
		return read()
	}
	for {
		d := p.deadline()
		if err := src.SetReadDeadline(d); err != nil {
			return 0, err
		}
		n, err := read()
		if n > 0 {
			p.touch()
		}
		switch {
		case n > 0 || err == nil || !isTimeout(err):
			return n, err
		case time.Now().Before(d):
			return 0, err // not our deadline: report it as it is
		case !p.deadline().After(d):
			return 0, p.idleErr()
		} // else the other direction moved bytes: wait again
	}
}

// write writes all of b to dst. With an idle limit, a write that makes no
// progress for idle while nothing else moves is an ErrIdle; a write that
// stalls while the other direction is busy is retried. A Write that returns
// less than asked without an error is io.ErrShortWrite.
func (p *pipe) write(dst net.Conn, b []byte) (int, error) {
	if p.idle <= 0 {
		n, err := dst.Write(b)
		if err == nil && n < len(b) {
			err = io.ErrShortWrite
		}
		return n, err
	}
	var done int
	for {
		d := p.deadline()
		if err := dst.SetWriteDeadline(d); err != nil {
			return done, err
		}
		n, err := dst.Write(b[done:])
		done += n
		if n > 0 {
			p.touch()
		}
		switch {
		case err == nil && done < len(b):
			return done, io.ErrShortWrite
		case err == nil:
			return done, nil
		case !isTimeout(err):
			return done, err
		case time.Now().Before(d):
			// Not our deadline, or a conn whose writes cannot resume after
			// a timeout (tls.Conn): report it as it is.
			return done, err
		case !p.deadline().After(d):
			return done, p.idleErr()
		} // else progress here or in the other direction: write on
	}
}

func (p *pipe) idleErr() error {
	return fmt.Errorf("%w: nothing moved for %v", ErrIdle, p.idle)
}

func isTimeout(err error) bool {
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}
