package trust

import "container/list"

// lru is a map of at most max keys that forgets its least recently used key
// to make room for a new one. It is not safe for concurrent use; its owner
// guards it.
type lru[K comparable, V any] struct {
	max   int
	order *list.List // of *lruItem[K, V], most recently used first
	items map[K]*list.Element
}

type lruItem[K comparable, V any] struct {
	key K
	val V
}

// newLRU returns an empty lru of at most n keys (at least one).
func newLRU[K comparable, V any](n int) *lru[K, V] {
	return &lru[K, V]{max: max(n, 1), order: list.New(), items: make(map[K]*list.Element)}
}

// get returns the value of k and marks k used.
func (l *lru[K, V]) get(k K) (V, bool) {
	el, ok := l.items[k]
	if !ok {
		var zero V
		return zero, false
	}
	l.order.MoveToFront(el)
	return el.Value.(*lruItem[K, V]).val, true
}

// add sets k to v and marks k used. It reports whether another key was
// forgotten to make room.
func (l *lru[K, V]) add(k K, v V) (evicted bool) {
	if el, ok := l.items[k]; ok {
		el.Value.(*lruItem[K, V]).val = v
		l.order.MoveToFront(el)
		return false
	}
	if l.order.Len() >= l.max {
		oldest := l.order.Back()
		l.order.Remove(oldest)
		delete(l.items, oldest.Value.(*lruItem[K, V]).key)
		evicted = true
	}
	l.items[k] = l.order.PushFront(&lruItem[K, V]{key: k, val: v})
	return evicted
}
