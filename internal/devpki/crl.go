package devpki

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Files of the CA's revocation state, inside the CA directory.
const (
	RevokedFile   = "revoked.txt" // one line per revoked certificate: serial (hex), time (RFC 3339), name
	CRLFile       = "crl.pem"     // the CRL WriteCRL last wrote
	CRLNumberFile = "crl-number"  // the last CRL number used, decimal
)

// DefaultCRLNextUpdate is how long a CRL written by WriteCRL is valid when no
// nextUpdate is given: a week, so a development CA does not trip the
// expiration checks the day after it was set up.
const DefaultCRLNextUpdate = 7 * 24 * time.Hour

// ErrAlreadyRevoked is wrapped by Revoke's error for a certificate that is
// already on the list.
var ErrAlreadyRevoked = errors.New("already revoked")

// Revoked is one entry of the CA's revocation list.
type Revoked struct {
	Serial *big.Int
	Time   time.Time
	Name   string
}

// Revoke adds the certificate dir/<name>.pem, which must have been issued by
// the CA in dir, to dir/revoked.txt, then writes a new CRL with WriteCRL and
// nextUpdate. It returns the serial it revoked and the paths written.
func Revoke(dir, name string, nextUpdate time.Duration) (*big.Int, []string, error) {
	if err := checkName(name); err != nil {
		return nil, nil, err
	}
	ca, _, err := loadCA(dir)
	if err != nil {
		return nil, nil, err
	}
	certPath := filepath.Join(dir, name+".pem")
	data, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, fmt.Errorf("devpki: revoking %q: %w", name, err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("devpki: %q: no PEM certificate", certPath)
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("devpki: %q: %w", certPath, err)
	}
	if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
		return nil, nil, fmt.Errorf("devpki: %q was not issued by the CA in %q", certPath, dir)
	}
	list, err := ReadRevoked(dir)
	if err != nil {
		return nil, nil, err
	}
	for _, r := range list {
		if r.Serial.Cmp(cert.SerialNumber) == 0 {
			return nil, nil, fmt.Errorf("devpki: %q (serial %s): %w", name, cert.SerialNumber.Text(16), ErrAlreadyRevoked)
		}
	}
	list = append(list, Revoked{Serial: cert.SerialNumber, Time: time.Now().UTC().Truncate(time.Second), Name: name})
	var buf bytes.Buffer
	for _, r := range list {
		fmt.Fprintf(&buf, "%s %s %s\n", r.Serial.Text(16), r.Time.Format(time.RFC3339), r.Name)
	}
	revPath := filepath.Join(dir, RevokedFile)
	if err := writeAtomic(revPath, buf.Bytes(), 0o644); err != nil {
		return nil, nil, err
	}
	paths, err := WriteCRL(dir, nextUpdate)
	return cert.SerialNumber, append([]string{revPath}, paths...), err
}

// ReadRevoked returns the entries of dir/revoked.txt; a missing file is an
// empty list.
func ReadRevoked(dir string) ([]Revoked, error) {
	path := filepath.Join(dir, RevokedFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("devpki: %w", err)
	}
	var out []Revoked
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		serial, ok := new(big.Int).SetString(f[0], 16)
		var t time.Time
		if len(f) >= 2 {
			t, err = time.Parse(time.RFC3339, f[1])
		}
		if !ok || len(f) < 2 || err != nil {
			return nil, fmt.Errorf("devpki: %s line %d: want \"SERIAL-HEX RFC3339-TIME NAME\"", path, line)
		}
		r := Revoked{Serial: serial, Time: t}
		if len(f) > 2 {
			r.Name = f[2]
		}
		out = append(out, r)
	}
	return out, nil
}

// WriteCRL signs a CRL of every certificate in dir/revoked.txt with the CA
// in dir, valid from now until now+nextUpdate (DefaultCRLNextUpdate if 0),
// numbered one above the last (dir/crl-number), and writes it to
// dir/crl.pem atomically. It returns the paths written.
func WriteCRL(dir string, nextUpdate time.Duration) ([]string, error) {
	if nextUpdate < 0 {
		return nil, fmt.Errorf("devpki: next update %v: must not be negative", nextUpdate)
	}
	if nextUpdate == 0 {
		nextUpdate = DefaultCRLNextUpdate
	}
	ca, _, err := loadCA(dir)
	if err != nil {
		return nil, err
	}
	list, err := ReadRevoked(dir)
	if err != nil {
		return nil, err
	}
	number := big.NewInt(0)
	numPath := filepath.Join(dir, CRLNumberFile)
	switch b, err := os.ReadFile(numPath); {
	case err == nil:
		if _, ok := number.SetString(strings.TrimSpace(string(b)), 10); !ok {
			return nil, fmt.Errorf("devpki: %q: not a decimal number", numPath)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("devpki: %w", err)
	}
	number.Add(number, big.NewInt(1))
	now := time.Now()
	tmpl := &x509.RevocationList{Number: number, ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(nextUpdate)}
	for _, r := range list {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: r.Serial, RevocationTime: r.Time})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("devpki: signing the CRL: %w", err)
	}
	crlPath := filepath.Join(dir, CRLFile)
	return writeFiles([]file{
		{numPath, []byte(number.String() + "\n"), 0o644},
		{crlPath, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644},
	})
}
