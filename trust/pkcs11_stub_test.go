//go:build !pkcs11 || !cgo

package trust_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/tunnel-dev/tunnel/trust"
)

// The default (static) build refuses a PKCS#11 key with an error that says
// how to get one that takes it, naming the field (the CLI maps it to
// --key) and the URI.
func TestPKCS11NotBuiltIn(t *testing.T) {
	ca := newCA(t, "CA")
	leaf := newLeaf(t, ca, "app", 0, nil)
	src := sources(t, leaf, nil, ca)
	src.KeyFile = "pkcs11:token=t;object=k?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/pin"
	_, err := trust.Load(src)
	if !errors.Is(err, trust.ErrNoPKCS11) {
		t.Fatalf("Load = %v, want ErrNoPKCS11", err)
	}
	for _, want := range []string{"KeyFile", "pkcs11:token=t;object=k", "built without PKCS#11", "-tags pkcs11", "make build-pkcs11"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if trust.PKCS11Supported {
		t.Error("PKCS11Supported in a build without the tag")
	}
}
