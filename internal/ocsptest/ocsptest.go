// Package ocsptest runs a real OCSP responder for tests: `openssl ocsp`
// serving a CA's index file, signing as the CA or a delegated responder.
// Certificates come from internal/devpki, made at test time.
package ocsptest

import (
	"bufio"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/devpki"
)

// RequireOpenSSL returns the path of openssl, or skips the test loudly when
// it is missing and CI is unset (CI installs it and fails instead).
func RequireOpenSSL(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("openssl")
	if err != nil {
		if ci := os.Getenv("CI"); ci != "" && ci != "false" {
			t.Fatal("openssl not found (apt-get install openssl)")
		}
		t.Skip("!!! SKIPPING: openssl not found; the OCSP tests need `openssl ocsp` as the responder")
	}
	return p
}

// CA is a test CA with an OpenSSL index file of the certificates it issued.
type CA struct {
	*devpki.KeyPair
	Dir      string
	CertPath string
	KeyPath  string
	index    string

	mu         sync.Mutex
	entries    []indexEntry // guarded by mu
	mtime      time.Time    // the index file's last mtime; guarded by mu
	responders []*Responder // running responders of this CA; guarded by mu
}

type indexEntry struct {
	cert      *x509.Certificate
	revokedAt time.Time // zero: valid
}

// NewCA makes a CA (ECDSA P-256) named cn in a temporary directory.
func NewCA(t testing.TB, cn string) *CA {
	t.Helper()
	kp, err := devpki.NewCA(cn, devpki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca := &CA{KeyPair: kp, Dir: dir, CertPath: filepath.Join(dir, "ca.pem"), KeyPath: filepath.Join(dir, "ca.key"),
		index: filepath.Join(dir, "index.txt")}
	write(t, ca.CertPath, kp.CertPEM)
	write(t, ca.KeyPath, kp.KeyPEM)
	// Several test certificates may share a subject.
	write(t, ca.index+".attr", []byte("unique_subject = no\n"))
	ca.writeIndex(t)
	return ca
}

func write(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Issue signs tmpl (see devpki.NewLeaf) and records it as valid in the
// index.
func (ca *CA) Issue(t testing.TB, tmpl *x509.Certificate, opt devpki.Options) *devpki.KeyPair {
	t.Helper()
	kp, err := devpki.NewLeaf(ca.KeyPair, tmpl, opt)
	if err != nil {
		t.Fatal(err)
	}
	ca.mu.Lock()
	ca.entries = append(ca.entries, indexEntry{cert: kp.Cert})
	ca.mu.Unlock()
	ca.writeIndex(t)
	return kp
}

// IssueUnlisted signs tmpl without recording it: its status is unknown.
func (ca *CA) IssueUnlisted(t testing.TB, tmpl *x509.Certificate, opt devpki.Options) *devpki.KeyPair {
	t.Helper()
	kp, err := devpki.NewLeaf(ca.KeyPair, tmpl, opt)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

// Revoke marks c revoked now in the index; a running responder reads the
// changed index on its next request.
func (ca *CA) Revoke(t testing.TB, c *x509.Certificate) {
	t.Helper()
	ca.mu.Lock()
	for i := range ca.entries {
		if ca.entries[i].cert.Equal(c) {
			ca.entries[i].revokedAt = time.Now().Add(-time.Second)
		}
	}
	ca.mu.Unlock()
	ca.writeIndex(t)
}

// writeIndex rewrites the index file (atomically, by rename).
func (ca *CA) writeIndex(t testing.TB) {
	t.Helper()
	ca.mu.Lock()
	var b strings.Builder
	for _, e := range ca.entries {
		status, rev := "V", ""
		if !e.revokedAt.IsZero() {
			status, rev = "R", e.revokedAt.UTC().Format("060102150405Z")
		}
		fmt.Fprintf(&b, "%s\t%s\t%s\t%s\tunknown\t%s\n", status, e.cert.NotAfter.UTC().Format("060102150405Z"), rev,
			serialHex(e.cert.SerialNumber), opensslName(e.cert.Subject))
	}
	// openssl ocsp re-reads the index when its mtime changes, at one
	// second's resolution: each version gets a later second than the last.
	mtime := time.Now().Truncate(time.Second)
	if next := ca.mtime.Add(time.Second); mtime.Before(next) {
		mtime = next
	}
	ca.mtime = mtime
	ca.mu.Unlock()
	tmp := ca.index + ".tmp"
	write(t, tmp, []byte(b.String()))
	if err := os.Chtimes(tmp, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, ca.index); err != nil {
		t.Fatal(err)
	}
	// openssl ocsp looks at the index when it goes back to accept(), that
	// is after answering a request: one throwaway request makes it load
	// the new index before the test's next real one.
	ca.mu.Lock()
	rs := slices.Clone(ca.responders)
	ca.mu.Unlock()
	for _, r := range rs {
		r.poke()
	}
}

// poke sends one request that the responder answers with an error, and
// waits for the answer.
func (r *Responder) poke() {
	select {
	case <-r.done:
		return
	default:
	}
	c := http.Client{Timeout: 5 * time.Second}
	if resp, err := c.Get(r.URL + "/"); err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// serialHex is how OpenSSL's index writes a serial: uppercase hex, an even
// number of digits.
func serialHex(n *big.Int) string {
	s := strings.ToUpper(n.Text(16))
	if len(s)%2 == 1 {
		s = "0" + s
	}
	return s
}

func opensslName(n pkix.Name) string { return "/CN=" + n.CommonName }

// ResponderConfig says how a Responder signs.
type ResponderConfig struct {
	// Signer signs the responses; nil means the CA itself. A delegated
	// responder certificate needs EKU id-kp-OCSPSigning to be accepted.
	Signer *devpki.KeyPair
	// Validity is each response's nextUpdate - thisUpdate, in whole
	// minutes (at least one); zero means 60 minutes.
	Validity time.Duration
}

// Responder is a running `openssl ocsp` responder.
type Responder struct {
	URL  string // http://127.0.0.1:PORT
	cmd  *exec.Cmd
	done chan struct{}
	log  *syncBuffer
}

var acceptRe = regexp.MustCompile(`ACCEPT \S*:(\d+) `)

// StartResponder runs openssl ocsp for ca. openssl binds its port on all
// addresses ([::]:PORT, it takes no bind address); the tests reach it on
// 127.0.0.1 only. It is stopped, by its PID, when the test ends.
func (ca *CA) StartResponder(t testing.TB, cfg ResponderConfig) *Responder {
	t.Helper()
	bin := RequireOpenSSL(t)
	signerCert, signerKey := ca.CertPath, ca.KeyPath
	if cfg.Signer != nil {
		dir := t.TempDir()
		signerCert, signerKey = filepath.Join(dir, "rsigner.pem"), filepath.Join(dir, "rsigner.key")
		write(t, signerCert, cfg.Signer.CertPEM)
		write(t, signerKey, cfg.Signer.KeyPEM)
	}
	minutes := int(cfg.Validity / time.Minute)
	if cfg.Validity == 0 {
		minutes = 60
	}
	cmd := exec.Command(bin, "ocsp", "-index", ca.index, "-port", "0", "-CA", ca.CertPath,
		"-rsigner", signerCert, "-rkey", signerKey, "-nmin", strconv.Itoa(max(minutes, 1)), "-ignore_err")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &Responder{cmd: cmd, done: make(chan struct{}), log: &syncBuffer{}}
	port := make(chan string, 1)
	go func() {
		defer close(r.done)
		sc := bufio.NewScanner(out)
		sent := false
		for sc.Scan() {
			line := sc.Text()
			r.log.add(line)
			if m := acceptRe.FindStringSubmatch(line + " "); m != nil && !sent {
				port <- m[1]
				sent = true
			}
		}
		_, _ = io.Copy(io.Discard, out)
		_ = cmd.Wait()
	}()
	t.Cleanup(r.Stop)
	select {
	case p := <-port:
		r.URL = "http://127.0.0.1:" + p
		ca.mu.Lock()
		ca.responders = append(ca.responders, r)
		ca.mu.Unlock()
	case <-r.done:
		t.Fatalf("openssl ocsp exited at start:\n%s", r.log)
	case <-time.After(30 * time.Second):
		t.Fatalf("openssl ocsp printed no ACCEPT line in 30 s:\n%s", r.log)
	}
	return r
}

// Stop ends the responder (its port then refuses connections).
func (r *Responder) Stop() {
	select {
	case <-r.done:
		return
	default:
	}
	_ = r.cmd.Process.Kill()
	<-r.done
}

// Log returns what the responder printed.
func (r *Responder) Log() string { return r.log.String() }

type syncBuffer struct {
	mu    sync.Mutex
	lines []string
}

func (b *syncBuffer) add(l string) {
	b.mu.Lock()
	b.lines = append(b.lines, l)
	b.mu.Unlock()
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.lines, "\n")
}
