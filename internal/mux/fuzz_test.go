package mux

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// fuzzConn serves a fixed byte stream to the guard and discards what the
// session writes.
type fuzzConn struct {
	net.Conn // nil; addresses and deadlines are not used
	r        *bytes.Reader
	mu       sync.Mutex
}

func (c *fuzzConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.r.Read(p)
}
func (c *fuzzConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *fuzzConn) Close() error                     { return nil }
func (c *fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }
func (c *fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *fuzzConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *fuzzConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }

func fuzzSeed(hs ...header) []byte {
	var b []byte
	for _, h := range hs {
		b = append(b, h[:]...)
		if h.typ() == typeData {
			b = append(b, bytes.Repeat([]byte{1}, int(h.length()))...)
		}
	}
	return b
}

// FuzzGuard feeds arbitrary bytes to a guarded server session whose
// application reads, answers, closes and resets streams. Whatever the
// bytes, nothing panics, the session ends, and everything the streams held
// goes back to the budget.
func FuzzGuard(f *testing.F) {
	f.Add(fuzzSeed(syn(1, 3), data(1, 5), makeHeader(typeWindowUpdate, flagFIN, 1, 0)))
	f.Add(fuzzSeed(syn(1, 1), syn(3, 2), makeHeader(typeWindowUpdate, flagRST, 1, 0), data(3, 7)))
	f.Add(fuzzSeed(makeHeader(typePing, flagSYN, 0, 9), makeHeader(typePing, flagACK, 0, guardPingID)))
	f.Add(fuzzSeed(syn(1, 0), makeHeader(typeWindowUpdate, 0, 1, 1<<20), makeHeader(typeGoAway, 0, 0, 0)))
	f.Add(fuzzSeed(syn(2, 1)))
	f.Add(fuzzSeed(syn(1, 1), syn(3, 1), syn(5, 1), syn(7, 1), syn(9, 1)))
	f.Fuzz(func(t *testing.T, in []byte) {
		budget := NewBudget(1<<20, nil)
		s, err := Server(&fuzzConn{r: bytes.NewReader(in)}, Options{
			Log: testLog(), MaxStreams: 4, Refusal: []byte{4}, Budget: budget,
		})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := 0; ; i++ {
			st, err := s.Accept()
			if err != nil {
				break
			}
			wg.Go(func() {
				st.SetDeadline(time.Now().Add(time.Second))
				b := make([]byte, 3)
				n, _ := st.Read(b)
				st.Write(b[:n])
				switch i % 3 {
				case 0:
					st.Close()
				case 1:
					st.Reset()
				default:
					io.Copy(io.Discard, st)
					st.Close()
				}
			})
		}
		s.Close()
		wg.Wait()
		if held := budget.Held(); held != 0 {
			t.Fatalf("the budget holds %d bytes after the session ended", held)
		}
		if g := budget.grown.Load(); g != 0 {
			t.Fatalf("%d bytes of window still promised after the session ended", g)
		}
	})
}
