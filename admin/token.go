package admin

import "sync/atomic"

// Token is an admin listener's bearer token, read from its file and re-read
// by every reload (Config.Token is its Get). The zero value has no file and
// holds no token. Safe for concurrent use.
type Token struct {
	path string // the file; "" for none
	cur  atomic.Pointer[[]byte]
}

// NewToken reads the token file at path (see LoadToken); an empty path
// holds no token.
func NewToken(path string) (*Token, error) {
	t := &Token{path: path}
	apply, err := t.Reload()
	if err != nil {
		return nil, err
	}
	apply()
	return t, nil
}

// Path returns the token file, or "".
func (t *Token) Path() string { return t.path }

// Reload re-reads the token file and returns the function that makes the
// new token current, for a reload to call once everything else checked
// out; on error nothing changes.
func (t *Token) Reload() (apply func(), err error) {
	if t.path == "" {
		return func() {}, nil
	}
	tok, err := LoadToken(t.path)
	if err != nil {
		return nil, err
	}
	return func() { t.cur.Store(&tok) }, nil
}

// Get returns the current token, or nil.
func (t *Token) Get() []byte {
	if p := t.cur.Load(); p != nil {
		return *p
	}
	return nil
}
