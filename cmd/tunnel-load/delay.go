package main

import (
	"context"
	"flag"
	"io"
	"net"
	"sync"
	"time"
)

// cmdDelay runs a proxy that behaves like a WAN link between its clients and
// --to: each direction delays every byte by rtt/2 and, with --rate, passes
// at most that many bytes a second, queueing at most --queue bytes; when the
// queue is full the proxy stops reading, so TCP backpressure reaches the
// sender as it would at a bottleneck. It prints {"listen": ADDR}.
func cmdDelay(ctx context.Context, fs *flag.FlagSet, args []string, stdout io.Writer) error {
	listen := fs.String("listen", "127.0.0.1:0", "address to accept on")
	to := fs.String("to", "", "address to forward to")
	rtt := fs.Duration("rtt", 50*time.Millisecond, "round-trip time to add")
	rate := fs.Int64("rate", 0, "bytes per second in each direction (0: no limit)")
	queue := fs.Int64("queue", 0, "bytes queued in each direction at most (0: twice the link's bytes in flight, at least 1 MiB)")
	if err := parse(fs, args, "to"); err != nil {
		return err
	}
	if *rtt < 0 || *rate < 0 || *queue < 0 {
		return &usageError{"--rtt, --rate and --queue must not be negative"}
	}
	l := linkSpec{delay: *rtt / 2, rate: *rate, queue: *queue}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	if err := emit(stdout, map[string]string{"listen": ln.Addr().String()}); err != nil {
		ln.Close()
		return err
	}
	return serveDelay(ctx, ln, *to, l)
}

// serveDelay proxies every connection accepted on ln to `to` through two
// links (one per direction) until ctx ends; it closes ln and waits for the
// connections to end.
func serveDelay(ctx context.Context, ln net.Listener, to string, l linkSpec) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	defer context.AfterFunc(ctx, func() { ln.Close() })()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Go(func() {
			defer c.Close()
			d := net.Dialer{Timeout: 10 * time.Second}
			up, err := d.DialContext(ctx, "tcp", to)
			if err != nil {
				return
			}
			defer up.Close()
			stop := context.AfterFunc(ctx, func() { c.Close(); up.Close() })
			defer stop()
			var dirs sync.WaitGroup
			dirs.Go(func() { l.relay(c.(*net.TCPConn), up.(*net.TCPConn)) })
			l.relay(up.(*net.TCPConn), c.(*net.TCPConn))
			dirs.Wait()
		})
	}
}

// linkSpec describes one direction of an emulated link.
type linkSpec struct {
	delay time.Duration // added to every byte
	rate  int64         // bytes per second; 0: unlimited
	queue int64         // bytes in the link at most; 0: default
}

func (l linkSpec) queueLimit() int64 {
	if l.queue > 0 {
		return l.queue
	}
	return max(1<<20, 2*l.rate*int64(l.delay)/int64(time.Second))
}

// chunk is data in the link and when it comes out; eof marks the sender's
// half-close.
type chunk struct {
	b   []byte
	at  time.Time
	eof bool
}

// relay copies src to dst through the link until EOF (then half-closes dst)
// or an error (then closes both, so the other direction ends too).
func (l linkSpec) relay(src, dst *net.TCPConn) {
	var (
		mu     sync.Mutex
		cond   = sync.NewCond(&mu)
		q      []chunk   // guarded by mu
		queued int64     // bytes in q; guarded by mu
		done   bool      // the writer has stopped; guarded by mu
		free   time.Time // when the link has sent everything queued; guarded by mu
	)
	limit := l.queueLimit()
	var wg sync.WaitGroup
	wg.Go(func() { // writer: delivers chunks when they are due
		defer func() {
			mu.Lock()
			done = true
			cond.Broadcast()
			mu.Unlock()
		}()
		for {
			mu.Lock()
			for len(q) == 0 {
				cond.Wait()
			}
			c := q[0]
			q = q[1:]
			mu.Unlock()
			if d := time.Until(c.at); d > 0 {
				time.Sleep(d)
			}
			if c.eof {
				dst.CloseWrite()
				return
			}
			if _, err := dst.Write(c.b); err != nil {
				src.Close()
				dst.Close()
				return
			}
			mu.Lock()
			queued -= int64(len(c.b))
			cond.Broadcast()
			mu.Unlock()
		}
	})
	defer wg.Wait()
	for {
		buf := make([]byte, 64<<10)
		n, err := src.Read(buf)
		mu.Lock()
		for n > 0 && queued+int64(n) > limit && queued > 0 && !done {
			cond.Wait()
		}
		if done {
			mu.Unlock()
			return
		}
		now := time.Now()
		if free.Before(now) {
			free = now
		}
		if n > 0 && l.rate > 0 {
			free = free.Add(time.Duration(int64(n) * int64(time.Second) / l.rate))
		}
		if n > 0 {
			q = append(q, chunk{b: buf[:n], at: free.Add(l.delay)})
			queued += int64(n)
		}
		if err != nil {
			if err == io.EOF {
				q = append(q, chunk{at: free.Add(l.delay), eof: true})
			} else {
				// A reset or a close: nothing more will be delivered.
				src.Close()
				dst.Close()
				q = append(q, chunk{at: now, eof: true})
			}
		}
		cond.Broadcast()
		mu.Unlock()
		if err != nil {
			return
		}
	}
}
