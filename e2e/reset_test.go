package e2e

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// abortConn closes c with SO_LINGER 0: its peer gets a RST, not a FIN.
func abortConn(t *testing.T, c *net.TCPConn) {
	t.Helper()
	if err := c.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// readUntilErr reads c until it fails and returns that error (nil for a
// clean EOF).
func readUntilErr(c net.Conn, d time.Duration) error {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	return err
}

// resetterBackend reads one byte, answers one, then resets.
func resetterBackend(t *testing.T) string {
	return startBackend(t, func(c *net.TCPConn) {
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			return
		}
		c.Write([]byte("y"))
		time.Sleep(50 * time.Millisecond) // let "y" leave before the RST
		c.SetLinger(0)
		c.Close()
	})
}

// witnessBackend answers one byte, then reports how its read ended.
func witnessBackend(t *testing.T) (string, <-chan error) {
	witnessed := make(chan error, 4)
	return startBackend(t, func(c *net.TCPConn) {
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			witnessed <- err
			return
		}
		c.Write([]byte("y"))
		witnessed <- readUntilErr(c, waitTimeout)
	}), witnessed
}

// exchangeByte dials addr, sends "x" and reads the "y" answer, so both ends
// are established before anyone resets.
func exchangeByte(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c := dialLocal(t, addr)
	c.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("reading the backend's answer: %v", err)
	}
	return c
}

// TestResetPropagation: an abortive close (RST) at either end reaches the
// other end through both tunnel processes as a reset, not as a clean EOF,
// as it does through stunnel; in multiplexed mode (a yamux RST frame) and
// in raw mode (the TLS connection is reset, with no close_notify).
func TestResetPropagation(t *testing.T) {
	t.Parallel()
	pk := pkiDir(t)

	resetter := resetterBackend(t)
	witness, witnessed := witnessBackend(t)
	for _, tc := range []struct {
		name, route string
		raw         bool
	}{
		{"multiplexed, backend resets", "resetter", false},
		{"multiplexed, application resets", "witness", false},
		{"raw, backend resets", "resetter", true},
		{"raw, application resets", "witness", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srvArgs := serverArgs(pk, "127.0.0.1:0", "resetter="+resetter, "witness="+witness)
			var cliExtra []string
			if tc.raw {
				srvArgs = append(srvArgs, "--raw-route", tc.route)
				cliExtra = []string{"--raw"}
			}
			srv := startProc(t, srvArgs...)
			cli := startProc(t, append(clientArgs(pk, srv.addr(t), tc.route), cliExtra...)...)
			c := exchangeByte(t, cli.forwardAddr(t, tc.route))
			start := time.Now()
			if tc.route == "resetter" {
				err := readUntilErr(c, waitTimeout)
				if !errors.Is(err, syscall.ECONNRESET) {
					t.Fatalf("the application's read ended with %v, want ECONNRESET (the backend reset)", err)
				}
				t.Logf("the backend's reset reached the application %v after its answer (the backend waits 50 ms before it resets)", time.Since(start))
				return
			}
			abortConn(t, c)
			select {
			case err := <-witnessed:
				if !errors.Is(err, syscall.ECONNRESET) {
					t.Fatalf("the backend's read ended with %v, want ECONNRESET (the application reset)", err)
				}
				t.Logf("the application's reset reached the backend in %v", time.Since(start))
			case <-time.After(waitTimeout):
				t.Fatal("the backend's read did not end")
			}
		})
	}
}
