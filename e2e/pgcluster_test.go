package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// pgCluster is a throwaway PostgreSQL cluster on a free 127.0.0.1 port:
// initdb in a temporary directory, trust authentication for the test user
// only, over loopback TCP only. It is stopped and removed when the test
// ends.
type pgCluster struct {
	bin  string // the directory of initdb, pg_ctl, psql, pgbench
	addr string // host:port
	user string
}

// pgUser is the cluster's only role; pg_hba.conf trusts it, and no one
// else, on 127.0.0.1.
const pgUser = "pgtest"

// startPostgres makes and starts a cluster. initdb refuses to run as root,
// so as root the server runs as the user nobody (runuser), in a directory
// given to nobody; otherwise as the current user.
func startPostgres(t *testing.T) *pgCluster {
	t.Helper()
	initdb := requireTool(t, "initdb", "/usr/lib/postgresql/*/bin/initdb")
	bin := filepath.Dir(initdb)
	parent := "" // $TMPDIR
	if os.Geteuid() == 0 {
		parent = "/tmp" // the cluster's user (nobody) must reach it: $TMPDIR may be private
	}
	dir, err := os.MkdirTemp(parent, "tunnel-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	data := filepath.Join(dir, "data")
	// asUser runs a PostgreSQL server program as the cluster's owner.
	var prefix []string // runuser -u nobody -- when root
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		nobody, err := user.Lookup("nobody")
		if err != nil {
			t.Fatalf("running as root, and no user nobody to run PostgreSQL as: %v", err)
		}
		uid, _ = strconv.Atoi(nobody.Uid)
		gid, _ = strconv.Atoi(nobody.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		prefix = []string{requireTool(t, "runuser", "/usr/sbin/runuser", "/sbin/runuser"), "-u", "nobody", "--"}
	}
	asUser := func(ctx context.Context, name string, args ...string) *exec.Cmd {
		argv := append(append(append([]string(nil), prefix...), filepath.Join(bin, name)), args...)
		return exec.CommandContext(ctx, argv[0], argv[1:]...)
	}
	run := func(cmd *exec.Cmd) {
		t.Helper()
		cmd.Dir = dir
		cmd.WaitDelay = 5 * time.Second
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
		}
	}
	run(asUser(t.Context(), "initdb", "-D", data, "-U", pgUser, "--auth=reject", "--no-locale", "-E", "UTF8", "--no-sync"))
	// Only the test user, only over loopback TCP; the socket directory is
	// private to the cluster.
	hba := filepath.Join(data, "pg_hba.conf")
	if err := os.WriteFile(hba, []byte("host all "+pgUser+" 127.0.0.1/32 trust\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(hba, uid, gid); err != nil { // -1, -1: no change
		t.Fatal(err)
	}
	addr := freeAddr(t, "127.0.0.1")
	_, port, _ := net.SplitHostPort(addr)
	opts := fmt.Sprintf("-p %s -c listen_addresses=127.0.0.1 -k %s -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50", port, dir)
	run(asUser(t.Context(), "pg_ctl", "-D", data, "-l", filepath.Join(dir, "postgres.log"), "-w", "-t", "60", "-o", opts, "start"))
	t.Cleanup(func() {
		// t.Context is done by now: stop with a context of our own.
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		cmd := asUser(ctx, "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("stopping PostgreSQL: %v\n%s", err, out)
		}
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(dir, "postgres.log")); err == nil {
				t.Logf("---- postgres.log ----\n%s", lastLines(string(b), 30))
			}
		}
	})
	return &pgCluster{bin: bin, addr: addr, user: pgUser}
}

// cmd returns a PostgreSQL client command (psql, pgbench) of the cluster's
// version, connecting to addr (the cluster, a tunnel forward or a stunnel
// port) as the test user.
func (pg *pgCluster) cmd(ctx context.Context, addr, name string, args ...string) *exec.Cmd {
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.CommandContext(ctx, filepath.Join(pg.bin, name), args...)
	cmd.Env = append(os.Environ(), "PGHOST="+host, "PGPORT="+port, "PGUSER="+pg.user,
		"PGDATABASE=postgres", "PGCONNECT_TIMEOUT=10", "PGSSLMODE=disable")
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// psql runs psql -X (no psqlrc) with ON_ERROR_STOP against addr, with stdin,
// and returns its stdout.
func (pg *pgCluster) psql(t *testing.T, addr string, stdin io.Reader, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 4*waitTimeout)
	defer cancel()
	cmd := pg.cmd(ctx, addr, "psql", append([]string{"-X", "-q", "-v", "ON_ERROR_STOP=1"}, args...)...)
	cmd.Stdin = stdin
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("psql %v via %s: %v\n%s", args, addr, err, stderr.String())
	}
	return out
}
