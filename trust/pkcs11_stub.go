//go:build !pkcs11 || !cgo

package trust

import (
	"crypto"
	"errors"
)

// PKCS11Supported reports whether this binary can use keys in PKCS#11
// tokens: built with cgo and -tags pkcs11 (make build-pkcs11).
const PKCS11Supported = false

// ErrNoPKCS11 is the error of a PKCS#11 key URI in a binary built without
// PKCS#11 support.
var ErrNoPKCS11 = errors.New("this tunnel was built without PKCS#11 support (rebuild with cgo and -tags pkcs11: make build-pkcs11)")

// openPKCS11Key checks the URI, then refuses: the default build is static
// and has no PKCS#11 module loader.
func openPKCS11Key(uri string) (crypto.Signer, error) {
	if _, err := ParsePKCS11URI(uri); err != nil {
		return nil, err
	}
	return nil, ErrNoPKCS11
}
