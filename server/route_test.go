package server

import "testing"

func TestParseRoute(t *testing.T) {
	tests := []struct {
		in      string
		want    Route
		wantErr bool
	}{
		{in: "db=127.0.0.1:5432", want: Route{Name: "db", Target: "127.0.0.1:5432"}},
		{in: "cache=localhost:6379", want: Route{Name: "cache", Target: "localhost:6379"}},
		{in: "v6=[::1]:5432", want: Route{Name: "v6", Target: "[::1]:5432"}},
		{in: "pg=unix:/run/postgresql/.s.PGSQL.5432", want: Route{Name: "pg", Target: "unix:/run/postgresql/.s.PGSQL.5432"}},
		{in: " db = 127.0.0.1:5432 ", want: Route{Name: "db", Target: "127.0.0.1:5432"}},
		{in: "db", wantErr: true},
		{in: "=127.0.0.1:5432", wantErr: true},
		{in: "d b=127.0.0.1:5432", wantErr: true},
		{in: "db=127.0.0.1", wantErr: true},
		{in: "db=:5432", wantErr: true},
		{in: "db=127.0.0.1:0", wantErr: true},
		{in: "db=127.0.0.1:65536", wantErr: true},
		{in: "db=127.0.0.1:pg", wantErr: true},
		{in: "pg=unix:relative.sock", wantErr: true},
		{in: "db=", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseRoute(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseRoute(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && got != tt.want {
			t.Errorf("ParseRoute(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestRouteNetwork(t *testing.T) {
	for _, tt := range []struct{ target, network, addr string }{
		{"127.0.0.1:5432", "tcp", "127.0.0.1:5432"},
		{"unix:/tmp/x.sock", "unix", "/tmp/x.sock"},
	} {
		n, a := Route{Name: "r", Target: tt.target}.network()
		if n != tt.network || a != tt.addr {
			t.Errorf("network(%q) = %q, %q, want %q, %q", tt.target, n, a, tt.network, tt.addr)
		}
	}
}
