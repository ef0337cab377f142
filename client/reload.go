package client

import (
	"context"
	"errors"

	"github.com/tunnel-dev/tunnel/trust"
)

// State is the part of a Client's configuration that a reload replaces,
// whole. The servers, timeouts and Raw are not in it: they take a restart.
type State struct {
	Material *trust.Material // what the client presents and trusts from now on; required
	Forwards []Forward       // replace Config.Forwards
	Publish  []Publish       // replace Config.Publish
}

// Reload applies st to the running client, in this order:
//
//  1. the forwards, as SetForwards does: new listeners are bound before old
//     ones close, and a port that cannot be bound (a *ListenError) changes
//     nothing else;
//  2. the publications: names new to st are published on the current
//     session, names gone are withdrawn, and a changed target is dialled
//     from the next inbound connection on;
//  3. the material, swapped into Config.Trust: the next dial presents the
//     new certificate and verifies the server with the new CA bundle;
//  4. Config.Revocation (if set) takes in the CRL files and CA bundle that
//     came with the material.
//
// The forwards come first because they are the one step that can fail on
// the machine (a port taken), and a reload that fails must leave the
// material as it was. Live sessions are kept: the server judges the new
// certificate when the next session is dialled. Reload waits for Run to
// take the forwards, or for ctx. Meant for the one reload goroutine.
func (c *Client) Reload(ctx context.Context, st State) error {
	switch {
	case c.cfg.Trust == nil:
		return &FieldError{"Trust", errors.New("required to reload")}
	case st.Material == nil:
		return errors.New("client: State.Material is nil")
	}
	if err := checkForwards(st.Forwards, len(st.Publish)); err != nil {
		return err
	}
	if err := checkPublish(st.Publish); err != nil {
		return err
	}
	if err := c.setForwards(ctx, st.Forwards); err != nil {
		return err
	}
	c.pubs.update(st.Publish)
	c.cfg.Trust.Swap(st.Material)
	if rc := c.cfg.Revocation; rc != nil {
		rc.Reloaded()
	}
	return nil
}
