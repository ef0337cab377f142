package mux

import "sync"

// Receive-buffer chunks come in two sizes: two TLS records, so that most
// records' plaintext lands in one chunk with one read; and a small one for
// a frame that starts an empty buffer and fits it, so that a peer sending a
// byte on each of many streams makes each hold 2 KiB, not 32 (the memory
// budget counts bytes, not chunks: the small size bounds the difference).
const (
	chunkSize      = 32 << 10
	smallChunkSize = 2 << 10
)

var (
	chunkPool      = sync.Pool{New: func() any { return &chunk{b: make([]byte, chunkSize)} }}
	smallChunkPool = sync.Pool{New: func() any { return &chunk{b: make([]byte, smallChunkSize)} }}
)

// getChunk returns an empty chunk for a frame of want bytes more.
func getChunk(want int, empty bool) *chunk {
	var c *chunk
	if empty && want <= smallChunkSize {
		c = smallChunkPool.Get().(*chunk)
	} else {
		c = chunkPool.Get().(*chunk)
	}
	c.r, c.w = 0, 0
	return c
}

func putChunk(c *chunk) {
	if len(c.b) == smallChunkSize {
		smallChunkPool.Put(c)
	} else {
		chunkPool.Put(c)
	}
}

// chunk is part of a stream's received data: b[r:w] is unread.
type chunk struct {
	b    []byte
	r, w int
}

// recvBuf is a stream's received data, a queue of pooled chunks: it holds
// what was received and not read, plus less than a chunk, so a stream's
// memory follows its data (yamux's receive buffer is a bytes.Buffer that
// doubles as it grows and keeps its size). The guard's reader fills it
// (fill, then commit once bytes are in); the stream's reader empties it,
// copying (read) or writing the bytes on from where they are (lend, then
// give back). Its methods are called with the guard's mu held; the slices
// fill and lend return are used outside the lock, by one goroutine each,
// until commit or giveBack.
type recvBuf struct {
	chunks  []*chunk
	n       int  // unread bytes
	filling bool // the guard's reader writes into the last chunk
	lent    bool // the stream's reader holds bytes of the first chunk
	dropped bool // drop ran while one of them was out: the chunks are the garbage collector's
}

// fill returns the free space the guard's reader may write into next, at
// most want bytes.
func (q *recvBuf) fill(want int) []byte {
	var c *chunk
	if len(q.chunks) > 0 {
		c = q.chunks[len(q.chunks)-1]
	}
	if c == nil || c.w == len(c.b) {
		c = getChunk(want, c == nil)
		q.chunks = append(q.chunks, c)
	}
	q.filling = true
	return c.b[c.w:min(len(c.b), c.w+want)]
}

// commit records that n bytes were written into what fill returned.
func (q *recvBuf) commit(n int) {
	q.filling = false
	if q.dropped {
		q.dropped = q.lent
		return
	}
	q.chunks[len(q.chunks)-1].w += n
	q.n += n
}

// read copies unread bytes into p and returns how many; it recycles the
// chunks it empties, so an idle stream holds none.
func (q *recvBuf) read(p []byte) int {
	total := 0
	for total < len(p) && len(q.chunks) > 0 {
		c := q.chunks[0]
		n := copy(p[total:], c.b[c.r:c.w])
		c.r += n
		total += n
		if c.r < c.w || !q.pop() {
			break
		}
	}
	q.n -= total
	return total
}

// lend returns up to max unread bytes where they are, for the stream's
// reader to write on; giveBack says how many it used.
func (q *recvBuf) lend(max int) []byte {
	c := q.chunks[0]
	q.lent = true
	return c.b[c.r:min(c.w, c.r+max)]
}

// giveBack ends a lend of which n bytes were used.
func (q *recvBuf) giveBack(n int) {
	q.lent = false
	if q.dropped {
		q.dropped = q.filling
		return
	}
	c := q.chunks[0]
	c.r += n
	q.n -= n
	if c.r == c.w {
		q.pop()
	}
}

// pop recycles the first chunk, read empty, unless the guard's reader is
// writing into it; it reports whether it did.
func (q *recvBuf) pop() bool {
	if len(q.chunks) == 1 && q.filling {
		return false
	}
	putChunk(q.chunks[0])
	q.chunks[0] = nil
	q.chunks = q.chunks[1:]
	if len(q.chunks) == 0 {
		q.chunks = nil
	}
	return true
}

// drop forgets what is buffered. The chunks go back to the pool, unless a
// slice of them is out (being filled or lent): then they are left to the
// garbage collector, and commit and giveBack know.
func (q *recvBuf) drop() {
	if q.filling || q.lent {
		q.dropped = true
	} else {
		for _, c := range q.chunks {
			putChunk(c)
		}
	}
	q.chunks = nil
	q.n = 0
}
