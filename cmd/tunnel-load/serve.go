package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"io"
	"net"
	"sync"
)

// Buffer sizes of the backends: the sink reads big chunks (bulk data), the
// echo server small ones (round trips, and many idle connections).
const (
	sinkBuf = 128 << 10
	echoBuf = 4 << 10
)

// cmdServe runs a sink and an echo server until ctx ends. It prints
// {"sink": ADDR, "echo": ADDR} once both listen.
//
// Sink: reads to EOF, then answers the number of bytes it read as 8 bytes,
// big-endian, and closes; the sender learns that everything arrived.
// Echo: writes back what it reads; on EOF it half-closes.
func cmdServe(ctx context.Context, fs *flag.FlagSet, args []string, stdout io.Writer) error {
	host := fs.String("host", "127.0.0.1", "address to listen on (ports are chosen by the kernel)")
	if err := parse(fs, args); err != nil {
		return err
	}
	sink, err := net.Listen("tcp", net.JoinHostPort(*host, "0"))
	if err != nil {
		return err
	}
	echo, err := net.Listen("tcp", net.JoinHostPort(*host, "0"))
	if err != nil {
		sink.Close()
		return err
	}
	// On return, close the listeners and the open connections, then wait
	// for the handlers: a handler waits for its peer, and a peer that never
	// closes would hold the return forever. (A context.AfterFunc here
	// raced: its stop func, deferred, could cancel the close after
	// ctx.Done, and wg.Wait then hung.)
	var wg sync.WaitGroup
	var open conns
	defer wg.Wait()
	defer func() { sink.Close(); echo.Close(); open.closeAll() }()
	wg.Go(func() { serve(sink, serveSink, &wg, &open) })
	wg.Go(func() { serve(echo, serveEcho, &wg, &open) })
	if err := emit(stdout, map[string]string{"sink": sink.Addr().String(), "echo": echo.Addr().String()}); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// conns is the set of a server's open connections.
type conns struct {
	mu     sync.Mutex
	set    map[net.Conn]struct{}
	closed bool
}

// add records c, or closes it and returns false after closeAll.
func (cs *conns) add(c net.Conn) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closed {
		c.Close()
		return false
	}
	if cs.set == nil {
		cs.set = map[net.Conn]struct{}{}
	}
	cs.set[c] = struct{}{}
	return true
}

func (cs *conns) remove(c net.Conn) {
	cs.mu.Lock()
	delete(cs.set, c)
	cs.mu.Unlock()
}

// closeAll closes every open connection and any added later.
func (cs *conns) closeAll() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.closed = true
	for c := range cs.set {
		c.Close()
	}
}

// serve accepts until ln is closed, one goroutine per connection, counted
// in wg and kept in open.
func serve(ln net.Listener, handle func(*net.TCPConn), wg *sync.WaitGroup, open *conns) {
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		if !open.add(c) {
			continue
		}
		wg.Go(func() {
			defer open.remove(c)
			defer c.Close()
			handle(c.(*net.TCPConn))
		})
	}
}

func serveSink(c *net.TCPConn) {
	buf := make([]byte, sinkBuf)
	var n int64
	for {
		m, err := c.Read(buf)
		n += int64(m)
		if err != nil {
			if err != io.EOF {
				return // the sender sees no count: a failed run
			}
			break
		}
	}
	var out [8]byte
	binary.BigEndian.PutUint64(out[:], uint64(n))
	c.Write(out[:])
}

func serveEcho(c *net.TCPConn) {
	buf := make([]byte, echoBuf)
	if _, err := io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, buf); err == nil {
		c.CloseWrite()
	}
}
