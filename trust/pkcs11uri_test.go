package trust_test

import (
	"strings"
	"testing"

	"github.com/tunnel-dev/tunnel/trust"
)

func TestParsePKCS11URI(t *testing.T) {
	const mod = "module-path=/usr/lib/softhsm/libsofthsm2.so"
	tests := []struct {
		in   string
		want string // "" means an error; else "token|object|id|pin"
		err  string
	}{
		{"pkcs11:token=tunnel;object=server-key?" + mod + "&pin-source=file:/etc/tunnel/pin", "tunnel|server-key||/etc/tunnel/pin", ""},
		{"PKCS11:token=My%20Token;id=%01%02?" + mod + "&pin-source=/etc/pin", "My Token||\x01\x02|/etc/pin", ""},
		{"pkcs11:serial=abc123;object=k;type=private?" + mod, "|k||", ""},
		{"pkcs11:slot-id=0;object=k;x-vendor=1?" + mod, "|k||", ""},
		{"pkcs11:token=t;object=k?" + mod + "&pin-value=1234", "", "pin-source=file:"},
		{"pkcs11:token=t;object=k?" + mod + "&pin-value=1234", "", "REDACTED"},
		{"pkcs11:object=k?" + mod, "", "no token"},
		{"pkcs11:token=t;serial=s;object=k?" + mod, "", "exactly one of"},
		{"pkcs11:token=t?" + mod, "", "no key"},
		{"pkcs11:token=t;object=k", "", "no module-path"},
		{"pkcs11:token=t;object=k?module-path=libsofthsm2.so", "", "not an absolute path"},
		{"pkcs11:token=t;object=k?module-name=softhsm2", "", "module-name is not supported"},
		{"pkcs11:token=t;token=u;object=k?" + mod, "", "given twice"},
		{"pkcs11:token=t;object=k;type=cert?" + mod, "", "type=private"},
		{"pkcs11:token=t;object=k;colour=blue?" + mod, "", "unknown attribute"},
		{"pkcs11:token=t;object=k;manufacturer=x?" + mod, "", "not supported"},
		{"pkcs11:token=t;object=%zz?" + mod, "", "percent-encoding"},
		{"pkcs11:token=t;object=k?" + mod + "&pin-source=relative", "", "want file:/absolute/path"},
		{"pkcs11:token=t;object=k;slot-id=x?" + mod, "", "slot-id"},
		{"pkcs11:token;object=k?" + mod, "", "NAME=VALUE"},
		{"file:/k.pem", "", "does not start with"},
	}
	for _, tt := range tests {
		u, err := trust.ParsePKCS11URI(tt.in)
		if tt.want == "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParsePKCS11URI(%q) = %v, want an error containing %q", tt.in, err, tt.err)
			}
			if err != nil && strings.Contains(err.Error(), "1234") {
				t.Errorf("ParsePKCS11URI(%q): the error repeats the PIN: %v", tt.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParsePKCS11URI(%q): %v", tt.in, err)
			continue
		}
		got := u.Token + "|" + u.Object + "|" + string(u.ID) + "|" + u.PINSource
		if got != tt.want {
			t.Errorf("ParsePKCS11URI(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func FuzzParsePKCS11URI(f *testing.F) {
	f.Add("pkcs11:token=tunnel;object=server-key?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/tunnel/pin")
	f.Add("pkcs11:slot-id=1;id=%01?module-path=/m.so&pin-value=secret")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := trust.ParsePKCS11URI(s)
		if err != nil {
			if strings.Contains(s, "pin-value=secret") && strings.Contains(err.Error(), "pin-value=secret") {
				t.Fatalf("error repeats a pin-value: %v", err)
			}
			return
		}
		if u.ModulePath == "" || u.ModulePath[0] != '/' || u.Object == "" && len(u.ID) == 0 {
			t.Fatalf("accepted %q without a module or a key: %+v", s, u)
		}
	})
}
