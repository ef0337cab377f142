package devpki

import (
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// File names inside a CA directory.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca-key.pem"
	CRLURLFile = "crl-url" // the CRL URL given to Init, one line; absent if none
)

// ErrNoCA is wrapped by IssueServer and IssueClient errors when dir holds no CA.
var ErrNoCA = errors.New("no CA")

// Init creates dir (mode 0700) holding a new self-signed CA made by NewCA
// with an empty name: ca.pem (0644) and ca-key.pem (0600). If opt.CRLURL is
// set it is written to dir/crl-url (0644), and later Issue calls embed it;
// with Force and no CRLURL an old crl-url is removed, since it belonged to
// the old CA. Without opt.Force Init refuses, writing nothing, if any of
// these files exists; the error wraps fs.ErrExist and names the file. Files
// are written atomically. Init returns the paths it wrote.
func Init(dir string, opt Options) ([]string, error) {
	if err := opt.validate(); err != nil {
		return nil, err
	}
	certPath, keyPath, urlPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile), filepath.Join(dir, CRLURLFile)
	if err := checkTargets(opt.Force, certPath, keyPath, urlPath); err != nil {
		return nil, err
	}
	ca, err := NewCA("", opt)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devpki: creating CA directory: %w", err)
	}
	files := []file{{keyPath, ca.KeyPEM, 0o600}, {certPath, ca.CertPEM, 0o644}}
	if opt.CRLURL != "" {
		files = append(files, file{urlPath, []byte(opt.CRLURL + "\n"), 0o644})
	} else if err := os.Remove(urlPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("devpki: removing stale CRL URL: %w", err)
	}
	return writeFiles(files)
}

// IssueServer writes dir/<name>.pem (0644) and dir/<name>-key.pem (0600): a
// server certificate signed by the CA in dir, with CN name, DNS SANs name
// (if it is a DNS name; an IP literal becomes an IP SAN) plus dnsNames, IP
// SANs ips, KeyUsage digitalSignature (plus keyEncipherment for RSA keys)
// and EKU serverAuth. The certificate must have at least one SAN. Its
// validity ends no later than the CA's. The CRL URL is opt.CRLURL, or else
// the one Init stored. name must match [A-Za-z0-9._-]+, not start with a dot,
// and not end in "-key" nor be "ca". Overwriting needs opt.Force, as for Init.
// It returns the paths written.
func IssueServer(dir, name string, dnsNames []string, ips []net.IP, opt Options) ([]string, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if opt.RSABits != 0 {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment // RSA key exchange in TLS 1.2 clients that still offer it
	}
	if ip := net.ParseIP(name); ip != nil {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
	} else if validDNSName(name) {
		tmpl.DNSNames = append(tmpl.DNSNames, name)
	}
	for _, d := range dnsNames {
		if !validDNSName(strings.TrimPrefix(d, "*.")) {
			return nil, fmt.Errorf("devpki: DNS name %q is not valid", d)
		}
		if !contains(tmpl.DNSNames, d) {
			tmpl.DNSNames = append(tmpl.DNSNames, d)
		}
	}
	for _, ip := range ips {
		if ip == nil || ip.To16() == nil {
			return nil, errors.New("devpki: invalid IP address")
		}
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
	}
	if len(tmpl.DNSNames) == 0 && len(tmpl.IPAddresses) == 0 {
		return nil, fmt.Errorf("devpki: server certificate %q: name is not a DNS name and no DNS name or IP address was given", name)
	}
	return issue(dir, name, tmpl, opt)
}

// IssueClient writes dir/<name>.pem (0644) and dir/<name>-key.pem (0600): a
// client certificate signed by the CA in dir, with CN name, KeyUsage
// digitalSignature and EKU clientAuth. Otherwise as IssueServer.
func IssueClient(dir, name string, opt Options) ([]string, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	return issue(dir, name, &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, opt)
}

// issue signs tmpl with the CA in dir and writes it as dir/<name>.pem.
func issue(dir, name string, tmpl *x509.Certificate, opt Options) ([]string, error) {
	if err := opt.validate(); err != nil {
		return nil, err
	}
	certPath, keyPath := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	if err := checkTargets(opt.Force, certPath, keyPath); err != nil {
		return nil, err
	}
	ca, crlURL, err := loadCA(dir)
	if err != nil {
		return nil, err
	}
	if opt.CRLURL == "" {
		opt.CRLURL = crlURL
	}
	tmpl.NotBefore = time.Now().Add(-clockSkew)
	tmpl.NotAfter = tmpl.NotBefore.Add(clockSkew + opt.validity(DefaultLeafDays))
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	leaf, err := NewLeaf(ca, tmpl, opt)
	if err != nil {
		return nil, err
	}
	return writeFiles([]file{{keyPath, leaf.KeyPEM, 0o600}, {certPath, leaf.CertPEM, 0o644}})
}

// loadCA reads the CA of dir and the CRL URL stored with it ("" if none).
func loadCA(dir string) (*KeyPair, string, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", fmt.Errorf("devpki: %w in %q: run `tunnel cert init %s` first", ErrNoCA, dir, dir)
	}
	if err != nil {
		return nil, "", fmt.Errorf("devpki: reading CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, "", fmt.Errorf("devpki: reading CA key: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, "", fmt.Errorf("devpki: %q: no PEM certificate", filepath.Join(dir, CACertFile))
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, "", fmt.Errorf("devpki: %q: %w", filepath.Join(dir, CACertFile), err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "PRIVATE KEY" {
		return nil, "", fmt.Errorf("devpki: %q: no PKCS#8 private key", filepath.Join(dir, CAKeyFile))
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, "", fmt.Errorf("devpki: %q: %w", filepath.Join(dir, CAKeyFile), err)
	}
	key, ok := k.(crypto.Signer)
	if !ok {
		return nil, "", fmt.Errorf("devpki: %q: unsupported key type %T", filepath.Join(dir, CAKeyFile), k)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, "", fmt.Errorf("devpki: %q does not match %q", filepath.Join(dir, CAKeyFile), filepath.Join(dir, CACertFile))
	}
	if !cert.IsCA {
		return nil, "", fmt.Errorf("devpki: %q is not a CA certificate", filepath.Join(dir, CACertFile))
	}
	if time.Now().After(cert.NotAfter) {
		return nil, "", fmt.Errorf("devpki: the CA in %q expired on %s", dir, cert.NotAfter.Format(time.DateOnly))
	}
	var crlURL string
	switch b, err := os.ReadFile(filepath.Join(dir, CRLURLFile)); {
	case err == nil:
		crlURL = strings.TrimSpace(string(b))
	case !errors.Is(err, fs.ErrNotExist):
		return nil, "", fmt.Errorf("devpki: reading CRL URL: %w", err)
	}
	return &KeyPair{Cert: cert, Key: key, CertPEM: certPEM, KeyPEM: keyPEM}, crlURL, nil
}

// safeName is a file name without path separators or a leading dot.
var safeName = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9._-]*$`)

// checkName refuses names that are unsafe as file names or whose files
// would collide with the CA's or another name's key file.
func checkName(name string) error {
	switch {
	case len(name) > 200 || !safeName.MatchString(name):
		return fmt.Errorf("devpki: name %q: want 1 to 200 of [A-Za-z0-9._-], not starting with a dot", name)
	case name == "ca" || strings.HasSuffix(name, "-key"):
		return fmt.Errorf("devpki: name %q: reserved (its files would collide with key or CA files)", name)
	}
	return nil
}

// validDNSName reports whether s is a DNS host name: dot-separated labels of
// letters, digits and inner hyphens, 1 to 63 bytes each, 253 in all.
func validDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

// file is one file to write.
type file struct {
	path string
	data []byte
	mode fs.FileMode
}

// checkTargets returns an error wrapping fs.ErrExist naming the first path
// that exists, unless force.
func checkTargets(force bool, paths ...string) error {
	if force {
		return nil
	}
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("devpki: %q: %w", p, fs.ErrExist)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("devpki: %w", err)
		}
	}
	return nil
}

// writeFiles writes each file atomically, in order, and returns the paths.
func writeFiles(files []file) ([]string, error) {
	var paths []string
	for _, f := range files {
		if err := writeAtomic(f.path, f.data, f.mode); err != nil {
			return paths, err
		}
		paths = append(paths, f.path)
	}
	return paths, nil
}

// writeAtomic writes data to a temporary file next to path, with mode, and
// renames it over path, so readers see the old file or the new one.
func writeAtomic(path string, data []byte, mode fs.FileMode) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("devpki: writing %q: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err = tmp.Chmod(mode); err != nil {
		return fmt.Errorf("devpki: writing %q: %w", path, err)
	}
	if _, err = tmp.Write(data); err != nil {
		return fmt.Errorf("devpki: writing %q: %w", path, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("devpki: writing %q: %w", path, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("devpki: writing %q: %w", path, err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("devpki: writing %q: %w", path, err)
	}
	return nil
}
