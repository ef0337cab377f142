package e2e

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// faultProxy is a TCP proxy on 127.0.0.1 that injects faults between a
// tunnel client and server: latency (pipelined, as a long link has), a
// bandwidth limit, a slicer that cuts writes into tiny pieces, a stall (no
// bytes, no FIN) of the connections open at the time, and a reset of every
// open connection. It exists because this machine has no netem qdisc.
type faultProxy struct {
	ln     net.Listener
	target string

	mu        sync.Mutex
	latency   time.Duration // one way
	bandwidth int           // bytes per second each way; 0: unlimited
	slice     int           // max bytes per write; 0: no slicing
	conns     map[*proxiedConn]struct{}
	toServer  atomic.Int64  // bytes forwarded from client to server
	done      chan struct{} // closed when the test ends
	wg        sync.WaitGroup
}

// proxiedConn is one client connection and its upstream.
type proxiedConn struct {
	down, up *net.TCPConn
	stalled  chan struct{} // closed when the link is stalled
	once     sync.Once
}

func (pc *proxiedConn) stall() { pc.once.Do(func() { close(pc.stalled) }) }

// startFaultProxy proxies a listener on 127.0.0.1:0 to target until the test ends.
func startFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fp := &faultProxy{ln: ln, target: target, conns: map[*proxiedConn]struct{}{}, done: make(chan struct{})}
	fp.wg.Go(fp.acceptLoop)
	t.Cleanup(func() {
		close(fp.done)
		ln.Close()
		fp.mu.Lock()
		for pc := range fp.conns {
			pc.down.Close()
			pc.up.Close()
		}
		fp.mu.Unlock()
		fp.wg.Wait()
	})
	return fp
}

func (fp *faultProxy) addr() string { return fp.ln.Addr().String() }

// set changes the faults applied to bytes read from now on.
func (fp *faultProxy) set(latency time.Duration, bandwidth, slice int) {
	fp.mu.Lock()
	fp.latency, fp.bandwidth, fp.slice = latency, bandwidth, slice
	fp.mu.Unlock()
}

// stall freezes every open connection: nothing more is forwarded either
// way and nothing is closed. New connections flow normally.
func (fp *faultProxy) stall() {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	for pc := range fp.conns {
		pc.stall()
	}
}

// reset closes every open connection with a TCP reset on both sides.
func (fp *faultProxy) reset() int {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	for pc := range fp.conns {
		pc.down.SetLinger(0)
		pc.up.SetLinger(0)
		pc.down.Close()
		pc.up.Close()
	}
	return len(fp.conns)
}

func (fp *faultProxy) acceptLoop() {
	for {
		c, err := fp.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.DialTimeout("tcp", fp.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		pc := &proxiedConn{down: c.(*net.TCPConn), up: up.(*net.TCPConn), stalled: make(chan struct{})}
		fp.mu.Lock()
		fp.conns[pc] = struct{}{}
		fp.mu.Unlock()
		var dirs sync.WaitGroup
		dirs.Add(2)
		fp.wg.Go(func() { defer dirs.Done(); fp.pump(pc, pc.down, pc.up) })
		fp.wg.Go(func() { defer dirs.Done(); fp.pump(pc, pc.up, pc.down) })
		fp.wg.Go(func() {
			dirs.Wait()
			pc.down.Close()
			pc.up.Close()
			fp.mu.Lock()
			delete(fp.conns, pc)
			fp.mu.Unlock()
		})
	}
}

// chunk is bytes read at a time, to be written no earlier than due.
type chunk struct {
	b   []byte
	due time.Time
}

// pump copies src to dst with the faults, keeping latency pipelined: a
// reader stamps chunks, a writer delivers each when it is due.
func (fp *faultProxy) pump(pc *proxiedConn, src, dst *net.TCPConn) {
	q := make(chan chunk, 1024)
	var reader sync.WaitGroup
	defer reader.Wait()
	defer func() {
		for range q { // unblock the reader if the writer gave up
		}
	}()
	reader.Go(func() {
		defer close(q)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				fp.mu.Lock()
				lat := fp.latency
				fp.mu.Unlock()
				select {
				case q <- chunk{b: buf[:n], due: time.Now().Add(lat)}:
				case <-pc.stalled:
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
	for c := range q {
		select {
		case <-pc.stalled:
			<-fp.done // hold the connections open, silent, until the test ends
			src.Close()
			return
		default:
		}
		if d := time.Until(c.due); d > 0 {
			time.Sleep(d)
		}
		fp.mu.Lock()
		bw, slice := fp.bandwidth, fp.slice
		fp.mu.Unlock()
		for b := c.b; len(b) > 0; {
			n := len(b)
			if slice > 0 {
				n = min(n, 1+int(time.Now().UnixNano()%int64(slice)))
			}
			if _, err := dst.Write(b[:n]); err != nil {
				src.Close()
				return
			}
			if src == pc.down {
				fp.toServer.Add(int64(n))
			}
			if bw > 0 {
				time.Sleep(time.Duration(n) * time.Second / time.Duration(bw))
			}
			b = b[n:]
		}
	}
	dst.CloseWrite()
}
