package mux

import "sync"

// chunkSize is the size of a receive-buffer chunk: two TLS records, so
// that most records' plaintext lands in one chunk with one read.
const chunkSize = 32 << 10

var chunkPool = sync.Pool{New: func() any { return &chunk{b: make([]byte, chunkSize)} }}

// chunk is part of a stream's received data: b[r:w] is unread.
type chunk struct {
	b    []byte
	r, w int
}

// recvBuf is a stream's received data, a queue of pooled chunks: it holds
// what was received and not read, plus less than a chunk, so a stream's
// memory follows its data (yamux's receive buffer is a bytes.Buffer that
// doubles as it grows and keeps its size). The guard's reader fills it
// (fill, then commit once bytes are in), the stream's reader empties it
// (read). Its methods are called with the guard's mu held; the slice fill
// returns is written by the guard's reader alone, outside the lock, until it
// commits.
type recvBuf struct {
	chunks  []*chunk
	n       int  // unread bytes
	filling bool // the guard's reader writes into the last chunk
	dead    bool // dropped while filling: commit recycles the last chunk
}

// fill returns the free space the guard's reader may write into next, at
// most want bytes.
func (q *recvBuf) fill(want int) []byte {
	var c *chunk
	if len(q.chunks) > 0 {
		c = q.chunks[len(q.chunks)-1]
	}
	if c == nil || c.w == len(c.b) {
		c = chunkPool.Get().(*chunk)
		c.r, c.w = 0, 0
		q.chunks = append(q.chunks, c)
	}
	q.filling = true
	return c.b[c.w:min(len(c.b), c.w+want)]
}

// commit records that n bytes were written into what fill returned.
func (q *recvBuf) commit(n int) {
	q.filling = false
	c := q.chunks[len(q.chunks)-1]
	if q.dead {
		q.dead = false
		q.chunks = q.chunks[:0]
		chunkPool.Put(c)
		return
	}
	c.w += n
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
		if c.r < c.w {
			break // p is full
		}
		if len(q.chunks) == 1 && q.filling {
			break // the guard's reader writes into it: it stays
		}
		q.chunks[0] = nil
		q.chunks = q.chunks[1:]
		chunkPool.Put(c)
	}
	q.n -= total
	if len(q.chunks) == 0 {
		q.chunks = nil
	}
	return total
}

// drop forgets what is buffered and recycles the chunks; a chunk the
// guard's reader is writing into goes back when it commits.
func (q *recvBuf) drop() {
	keep := 0
	if q.filling && len(q.chunks) > 0 {
		keep = 1
		q.dead = true
	}
	for _, c := range q.chunks[:len(q.chunks)-keep] {
		chunkPool.Put(c)
	}
	if keep == 1 {
		q.chunks = q.chunks[len(q.chunks)-1:]
	} else {
		q.chunks = nil
	}
	q.n = 0
}
