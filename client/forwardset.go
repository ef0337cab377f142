package client

import (
	"context"
	"errors"
	"net"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/tunnel-dev/tunnel/internal/audit"
	"github.com/tunnel-dev/tunnel/internal/systemd"
)

// forwardUpdate asks Run to make the forward listeners match fwds.
type forwardUpdate struct {
	fwds []Forward
	done chan error // receives the result; buffered
}

// SetForwards makes the running client's forward listeners match fwds, as a
// reload does: it opens listeners for the forwards that are new and closes
// those of the forwards that are gone (a forward whose route changed is
// both). Connections already accepted go on until they end. New listeners
// are bound before any old one is closed, so a port that cannot be bound
// (a *ListenError) changes nothing, unless it is the address of a forward
// being replaced, which must close first. It waits for Run to apply the
// change, or for ctx. Safe for concurrent use while Run runs.
func (c *Client) SetForwards(ctx context.Context, fwds []Forward) error {
	if err := checkForwards(fwds, len(c.pubs.stats())); err != nil {
		return err
	}
	return c.setForwards(ctx, fwds)
}

// setForwards is SetForwards for forwards already checked.
func (c *Client) setForwards(ctx context.Context, fwds []Forward) error {
	u := forwardUpdate{fwds: fwds, done: make(chan error, 1)}
	select {
	case c.updates <- u:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-u.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// forwardSet is Run's table of live forward listeners; only Run's
// goroutine touches it.
type forwardSet struct {
	lns map[Forward]net.Listener
}

// start serves ln for f on a goroutine in wg and logs listener_started.
func (fs *forwardSet) start(ctx context.Context, c *Client, f Forward, ln net.Listener, wg *sync.WaitGroup) {
	if fs.lns == nil {
		fs.lns = map[Forward]net.Listener{}
	}
	fs.lns[f] = ln
	c.log.WithFields(logrus.Fields{audit.Event: audit.ListenerStarted, audit.Listen: ln.Addr().String(), audit.Route: f.Route}).
		Info("forward listening")
	wg.Go(func() { c.serveForward(ctx, ln, f, wg) })
}

// apply makes the listeners match fwds; see SetForwards.
func (fs *forwardSet) apply(ctx context.Context, c *Client, fwds []Forward, wg *sync.WaitGroup) error {
	want := map[Forward]bool{}
	for _, f := range fwds {
		want[f] = true
	}
	var gone []Forward
	freed := map[string]bool{} // listen addresses of the forwards that go
	for f := range fs.lns {
		if !want[f] {
			gone = append(gone, f)
			freed[f.Listen] = true
		}
	}
	var fresh, later []Forward // bind now; bind once the old listener is closed
	for _, f := range fwds {
		if _, ok := fs.lns[f]; ok {
			continue
		}
		if freed[f.Listen] && !isEphemeral(f.Listen) {
			later = append(later, f)
		} else {
			fresh = append(fresh, f)
		}
	}
	bound, err := bindForwards(ctx, fresh)
	if err != nil {
		return err
	}
	for _, f := range gone {
		ln := fs.lns[f]
		delete(fs.lns, f)
		ln.Close() // its serveForward returns; accepted connections go on
		c.log.WithFields(logrus.Fields{audit.Event: audit.ListenerStopped, audit.Listen: ln.Addr().String(), audit.Route: f.Route}).
			Info("forward closed")
	}
	for i, f := range fresh {
		fs.start(ctx, c, f, bound[i], wg)
	}
	var errs []error
	for _, f := range later {
		ln, err := listenForward(ctx, f)
		if err != nil {
			errs = append(errs, &ListenError{Forward: f, Err: err})
			continue
		}
		fs.start(ctx, c, f, ln, wg)
	}
	return errors.Join(errs...)
}

// isEphemeral reports whether addr asks for any free port (":0"): such a
// forward never needs the port of the one it replaces.
func isEphemeral(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return err == nil && port == "0"
}

// bindForwards binds the local address of every forward of fwds, in order,
// or none: if one cannot be bound it closes the others and returns a
// *ListenError.
func bindForwards(ctx context.Context, fwds []Forward) ([]net.Listener, error) {
	lns := make([]net.Listener, 0, len(fwds))
	for _, f := range fwds {
		ln, err := listenForward(ctx, f)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, &ListenError{Forward: f, Err: err}
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// listenForward binds f's local address, or takes the socket systemd
// passed for a "systemd:NAME" forward (each can be taken once: a reload
// that keeps the forward keeps its listener).
func listenForward(ctx context.Context, f Forward) (net.Listener, error) {
	if name, ok := systemd.SocketName(f.Listen); ok {
		return systemd.Listener(name)
	}
	lc := net.ListenConfig{KeepAliveConfig: tcpKeepAlive}
	return lc.Listen(ctx, "tcp", f.Listen)
}
