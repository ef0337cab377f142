//go:build pkcs11 && cgo

package trust

import (
	"crypto"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/ThalesGroup/crypto11"
)

// PKCS11Supported reports whether this binary can use keys in PKCS#11
// tokens: built with cgo and -tags pkcs11 (make build-pkcs11).
const PKCS11Supported = true

// ErrNoPKCS11 is the error of a PKCS#11 key URI in a binary built without
// PKCS#11 support; this binary has it, so nothing returns it.
var ErrNoPKCS11 = errors.New("this tunnel was built without PKCS#11 support (rebuild with cgo and -tags pkcs11: make build-pkcs11)")

// pkcs11Contexts are the open token sessions, one per module, token and
// PIN, kept for the life of the process: a reload looks the key up again
// (a rotated key under the same label is found) without logging in anew,
// and a handshake in flight never loses the session its key uses.
var (
	pkcs11Mu       sync.Mutex
	pkcs11Contexts = map[string]*crypto11.Context{} // guarded by pkcs11Mu
)

// openPKCS11Key returns a crypto.Signer for the key uri names. Signing
// happens in the token; the private key never leaves it.
func openPKCS11Key(uri string) (crypto.Signer, error) {
	u, err := ParsePKCS11URI(uri)
	if err != nil {
		return nil, err
	}
	pin, err := u.readPIN()
	if err != nil {
		return nil, err
	}
	slot := -1
	if u.SlotID != nil {
		slot = *u.SlotID
	}
	key := fmt.Sprintf("%s\x00%s\x00%s\x00%d\x00%s", u.ModulePath, u.Token, u.Serial, slot, pin)
	pkcs11Mu.Lock()
	defer pkcs11Mu.Unlock()
	ctx, ok := pkcs11Contexts[key]
	if !ok {
		cfg := &crypto11.Config{Path: u.ModulePath, TokenLabel: u.Token, TokenSerial: u.Serial, SlotNumber: u.SlotID,
			Pin: pin, LoginNotSupported: u.PINSource == ""}
		ctx, err = crypto11.Configure(cfg)
		if err != nil {
			return nil, fmt.Errorf("PKCS#11 module %q, %s: %w", u.ModulePath, u.tokenName(), explainPKCS11(err))
		}
		pkcs11Contexts[key] = ctx
	}
	var label []byte
	if u.Object != "" {
		label = []byte(u.Object)
	}
	signer, err := ctx.FindKeyPair(u.ID, label)
	if err != nil && !strings.Contains(err.Error(), "not found") {
		return nil, fmt.Errorf("PKCS#11 %s, %s: %w", u.tokenName(), u.keyName(), explainPKCS11(err))
	}
	if signer == nil {
		return nil, fmt.Errorf("PKCS#11 %s: no private key with %s (and its public key) in the token", u.tokenName(), u.keyName())
	}
	return signer, nil
}

// explainPKCS11 names the common failures in words.
func explainPKCS11(err error) error {
	msg := err.Error()
	switch {
	case containsAny(msg, "CKR_PIN_INCORRECT"):
		return fmt.Errorf("wrong PIN (CKR_PIN_INCORRECT; check the pin-source file): %w", err)
	case containsAny(msg, "CKR_PIN_LOCKED"):
		return fmt.Errorf("the PIN is locked after too many wrong tries (CKR_PIN_LOCKED): %w", err)
	case containsAny(msg, "could not find PKCS#11 token"):
		return fmt.Errorf("no such token in the module's slots: %w", err)
	case containsAny(msg, "failed to open module"):
		return fmt.Errorf("cannot load the PKCS#11 library: %w", err)
	}
	return err
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
