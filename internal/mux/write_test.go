package mux

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"
	"time"
)

func frame(typ byte, flags uint16, id, length uint32) []byte {
	h := makeHeader(typ, flags, id, length)
	return h[:]
}

// The guard's write side: what yamux writes and what reaches the conn below.
// yamux writes only header-only frames: they leave at once; its window
// updates carry the guard's grant, not yamux's; frames for streams the guard
// does not know are dropped. Stream data is written by the guard itself
// (writeData): a data header and the start of its body leave in one write.
func TestGuardWrites(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 3000) // 48000 bytes
	open := frame(typeWindowUpdate, flagSYN, 3, 16<<20)   // yamux's SYN: its whole window
	opened := frame(typeWindowUpdate, flagSYN, 3, 0)      // what the guard sends: no credit yet
	tests := []struct {
		name   string
		frames [][]byte // the Writes yamux makes
		data   []byte   // then written on stream 3 through writeData
		want   [][]byte // the Writes the conn below sees
	}{
		{"a stream's SYN goes out at once, with the guard's grant",
			[][]byte{open}, nil,
			[][]byte{opened}},
		{"data header and body become one write",
			[][]byte{open}, []byte("hello"),
			[][]byte{opened, append(frame(typeData, 0, 3, 5), "hello"...)}},
		{"a window update with nothing to grant is dropped",
			[][]byte{open, frame(typeWindowUpdate, 0, 3, 1<<20)}, nil,
			[][]byte{opened}},
		{"a FIN goes out at once",
			[][]byte{open, frame(typeWindowUpdate, flagFIN, 3, 1<<20)}, nil,
			[][]byte{opened, frame(typeWindowUpdate, flagFIN, 3, 0)}},
		{"ping goes out alone at once",
			[][]byte{frame(typePing, flagSYN, 0, 7)}, nil,
			[][]byte{frame(typePing, flagSYN, 0, 7)}},
		{"go away goes out alone at once",
			[][]byte{frame(typeGoAway, 0, 0, 0)}, nil,
			[][]byte{frame(typeGoAway, 0, 0, 0)}},
		{"empty data frame (flags only) goes out at once",
			[][]byte{open, frame(typeData, flagFIN, 3, 0)}, nil,
			[][]byte{opened, frame(typeData, flagFIN, 3, 0)}},
		{"large body: header shares the first record, the rest follows uncopied",
			[][]byte{open}, big,
			[][]byte{opened, append(frame(typeData, 0, 3, uint32(len(big))), big[:firstChunk]...), big[firstChunk:]}},
		{"frames for a stream the guard does not know are dropped",
			[][]byte{frame(typeWindowUpdate, 0, 5, 9), frame(typeWindowUpdate, flagFIN, 5, 0)}, nil,
			nil},
		{"a RST goes out and the stream is gone",
			[][]byte{open, frame(typeWindowUpdate, flagRST, 3, 0), frame(typeWindowUpdate, flagFIN, 3, 0)}, nil,
			[][]byte{opened, frame(typeWindowUpdate, flagRST, 3, 0)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opt, _ := Options{Log: testLog()}.withDefaults()
			rc := &recordConn{}
			g := newGuard(rc, opt, false)
			for i, f := range tt.frames {
				if n, err := g.Write(f); n != len(f) || err != nil {
					t.Fatalf("Write #%d (%d bytes) = %d, %v", i, len(f), n, err)
				}
			}
			if tt.data != nil {
				if n, err := g.writeData(3, tt.data, func() time.Time { return time.Time{} }); n != len(tt.data) || err != nil {
					t.Fatalf("writeData(%d bytes) = %d, %v", len(tt.data), n, err)
				}
			}
			if len(rc.writes) != len(tt.want) {
				t.Fatalf("conn saw %d writes, want %d", len(rc.writes), len(tt.want))
			}
			for i := range tt.want {
				if !bytes.Equal(rc.writes[i], tt.want[i]) {
					t.Errorf("write #%d = %d bytes %x..., want %d bytes %x...", i, len(rc.writes[i]), head(rc.writes[i]), len(tt.want[i]), head(tt.want[i]))
				}
			}
		})
	}
}

// yamux writes stream data only through the guard's Stream, never through
// its own send goroutine: a data header from yamux is an error, not bytes
// passed on unaccounted.
func TestGuardWriteYamuxData(t *testing.T) {
	opt, _ := Options{Log: testLog()}.withDefaults()
	g := newGuard(&recordConn{}, opt, false)
	if _, err := g.Write(frame(typeWindowUpdate, flagSYN, 3, 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Write(frame(typeData, 0, 3, 5)); err == nil {
		t.Fatal("a data header from yamux was accepted")
	}
}

func head(b []byte) []byte { return b[:min(len(b), 20)] }

// A write that is not a frame header where one is due is an error, not
// bytes passed on unchecked.
func TestGuardWriteNotAHeader(t *testing.T) {
	opt, _ := Options{Log: testLog()}.withDefaults()
	g := newGuard(&recordConn{}, opt, false)
	if _, err := g.Write([]byte("hello")); err == nil {
		t.Fatal("a 5-byte write where a header was due was accepted")
	}
}

// Pings are header-only frames: a writer that held them back waiting for a
// body would stall the session, and Ping would never return.
func TestGuardDoesNotHoldHeaderOnlyFrames(t *testing.T) {
	_, cs, ss := sessionPair(t)
	for range 3 {
		for name, s := range map[string]*Session{"client": cs, "server": ss} {
			done := make(chan error, 1)
			go func() { _, err := s.Ping(); done <- err }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("%s ping: %v", name, err)
				}
			case <-time.After(10 * time.Second): // a ping on loopback takes well under a millisecond
				t.Fatalf("%s ping through the guard did not return within 10 s", name)
			}
		}
	}
}

// Each small data frame reaches the socket as one write, not two (header,
// body), and the bytes arrive intact.
func TestGuardOneWritePerDataFrame(t *testing.T) {
	cc, cs, ss := sessionPair(t)
	const frames = 200
	got := make(chan []byte, 1)
	go func() {
		st, err := ss.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer st.Close()
		st.SetReadDeadline(time.Now().Add(30 * time.Second))
		b, _ := io.ReadAll(st)
		got <- b
	}()
	st, err := cs.Open()
	if err != nil {
		t.Fatal(err)
	}
	var want []byte
	before := cc.count() // the SYN (a window update) may or may not be out yet
	for i := range frames {
		msg := []byte{byte(i), 'x', 'y'}
		want = append(want, msg...)
		if _, err := st.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	mid := cc.count()
	st.CloseWrite()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("server read %d bytes, want %d", len(b), len(want))
	}
	// Stream.Write returns once its frame is written, so mid-before counts the
	// data frames' writes plus at most the SYN and the guard's ping: one
	// each, not two.
	if n := mid - before; n > frames+2 {
		t.Errorf("%d data frames took %d writes to the conn, want at most %d (one per frame)", frames, n, frames+2)
	}
}

func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
