package main

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/tunnel-dev/tunnel/admin"
	"github.com/tunnel-dev/tunnel/client"
	"github.com/tunnel-dev/tunnel/server"
)

// What each role tells ops.go: liveness, the STATUS= line, its part of the
// admin status, closing a session.

func (r *serverRun) alive() error { return r.srv.Alive() }

func (r *serverRun) statusLine() string {
	st := r.srv.Stats()
	return fmt.Sprintf("%d sessions, %d streams", st.SessionsActive, st.StreamsActive)
}

func (r *serverRun) status(st *admin.Status) {
	for _, s := range r.srv.Sessions() {
		st.Sessions = append(st.Sessions, admin.Session{ID: s.ID, Mode: s.Mode, Identity: admin.IdentityOf(s.Identity), Addr: s.Addr,
			Since: s.Since, Streams: s.Streams, StreamsTotal: s.StreamsTotal, BytesIn: s.BytesIn, BytesOut: s.BytesOut})
	}
	for _, rt := range r.srv.Routes() {
		st.Routes = append(st.Routes, admin.Route{Name: rt.Name, Target: rt.Target, Proxy: rt.Proxy, Raw: rt.Raw, Streams: rt.Open,
			StreamsTotal: rt.Streams, BytesIn: rt.BytesIn, BytesOut: rt.BytesOut})
	}
	xs := r.srv.Stats().Exposes
	for i, x := range r.s.Server.Exposes {
		xst := xs[x.Name]
		e := admin.Expose{Name: x.Name, Listen: x.Listen, Publishers: []admin.Publisher{}, Active: xst.Active,
			StreamsTotal: xst.Streams, BytesIn: xst.BytesIn, BytesOut: xst.BytesOut}
		if i < len(r.xlns) {
			e.Listen = r.xlns[i].Addr().String()
		}
		for _, p := range xst.Publishers {
			e.Publishers = append(e.Publishers, admin.Publisher{SessionID: p.SessionID, Identity: admin.IdentityOf(p.Identity), Addr: p.Addr,
				Since: p.Since, Streams: p.StreamsActive, StreamsTotal: p.StreamsTotal})
		}
		st.Exposes = append(st.Exposes, e)
	}
}

func (r *serverRun) closeSession(id string) error {
	if err := r.srv.CloseSession(id); errors.Is(err, server.ErrNoSession) {
		return admin.ErrNoSession
	} else if err != nil {
		return err
	}
	return nil
}

func (r *clientRun) alive() error { return r.cl.Alive() }

func (r *clientRun) statusLine() string {
	st := r.cl.Stats()
	s := r.cl.Session()
	switch {
	case r.s.Client.Config.Raw:
		return fmt.Sprintf("raw mode, %d streams", st.StreamsActive)
	case s.Up:
		return fmt.Sprintf("session up to %s, %d streams", s.Server, st.StreamsActive)
	}
	return fmt.Sprintf("no session to the server, %d streams", st.StreamsActive)
}

func (r *clientRun) status(st *admin.Status) {
	s := r.cl.Session()
	state := &admin.SessionState{State: "down", DownSince: s.DownAt}
	switch {
	case r.s.Client.Config.Raw:
		state = &admin.SessionState{State: "none"}
	case s.Up:
		state = &admin.SessionState{State: "up", ID: s.ID, Server: s.Server, Since: s.Since}
		st.Sessions = append(st.Sessions, admin.Session{ID: s.ID, Identity: admin.IdentityOf(s.Identity), Addr: s.Server, Since: s.Since,
			Streams: s.Streams, BytesIn: s.BytesIn, BytesOut: s.BytesOut})
	}
	st.Session = state
	for _, f := range r.cl.Forwards() {
		st.Forwards = append(st.Forwards, admin.Forward{Listen: f.Listen, Addr: f.Addr, Route: f.Route, Streams: f.Open, Total: f.Total,
			Session: state.State})
	}
	pubs := r.cl.Stats().Publications
	for _, name := range slices.Sorted(maps.Keys(pubs)) {
		p := pubs[name]
		state := "pending"
		switch {
		case p.Live:
			state = "live"
		case p.Refused != "":
			state = "refused"
		}
		st.Publications = append(st.Publications, admin.Publication{Name: name, Target: p.Target, State: state, Refused: p.Refused,
			Streams: p.Active, StreamsTotal: p.Streams, Failed: p.Failed})
	}
}

func (r *clientRun) closeSession(id string) error {
	if err := r.cl.CloseSession(id); errors.Is(err, client.ErrNoSession) {
		return admin.ErrNoSession
	} else if err != nil {
		return err
	}
	return nil
}
