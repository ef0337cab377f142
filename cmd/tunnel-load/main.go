// Command tunnel-load is the load tool of the benchmark suite: backends (a
// sink and an echo server), a load generator that measures one scenario
// against one address and prints the result as JSON, and a proxy that adds
// latency and a rate limit, as a WAN link would. scripts/bench drives it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage:
  tunnel-load serve [--listen 127.0.0.1:0]                  sink and echo backends; prints their addresses
  tunnel-load delay --to ADDR --rtt 50ms --rate BYTES/S     a WAN-like proxy; prints its address
  tunnel-load throughput --addr ADDR --bytes N [--conns C]  N bytes on each of C connections to a sink
  tunnel-load pingpong --addr ADDR --count N                N one-byte round trips to an echo server
  tunnel-load connrate --addr ADDR --count N --concurrency C   N new connections, 64 bytes echoed on each
  tunnel-load streams --addr ADDR --count N --pids P,Q      N idle connections held open, then RSS of P,Q
  tunnel-load handshakes --addr ADDR --count N --ca F --server-name S (--cert F --key F | --ca-key F [--sources 127.1.0.0/16])
                                                             N tunnel sessions at once against one server
  tunnel-load tlsrate --addr ADDR --count N --concurrency C --cert F --key F --ca F --server-name S [--alpn tunnel/1]
                                                             N full mutual-TLS handshakes (no resumption), C at a time
Measurements print one JSON object on stdout. Exit status 2: bad usage; 1: the run failed.`

// usageError marks a command-line mistake (exit status 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	cmds := map[string]func(context.Context, *flag.FlagSet, []string, io.Writer) error{
		"serve":      cmdServe,
		"delay":      cmdDelay,
		"throughput": cmdThroughput,
		"pingpong":   cmdPingpong,
		"connrate":   cmdConnrate,
		"streams":    cmdStreams,
		"handshakes": cmdHandshakes,
		"tlsrate":    cmdTLSRate,
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "tunnel-load: unknown command %q\n%s\n", args[0], usage)
		return 2
	}
	fs := flag.NewFlagSet("tunnel-load "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	err := cmd(ctx, fs, args[1:], stdout)
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 2
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "tunnel-load %s: %v\n", args[0], err)
		return 2
	default:
		fmt.Fprintf(stderr, "tunnel-load %s: %v\n", args[0], err)
		return 1
	}
}

// parse parses args into fs and checks that every flag in required is set.
func parse(fs *flag.FlagSet, args []string, required ...string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, name := range required {
		if !set[name] {
			return &usageError{fmt.Sprintf("--%s is required", name)}
		}
	}
	return nil
}

// positive checks that each named value is > 0.
func positive(vals map[string]int64) error {
	for name, v := range vals {
		if v <= 0 {
			return &usageError{fmt.Sprintf("--%s: %d is not a positive number", name, v)}
		}
	}
	return nil
}

// emit prints v as one line of JSON.
func emit(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// newFlagSet is the flag set each command parses into.
func newFlagSet() *flag.FlagSet { return flag.NewFlagSet("tunnel-load", flag.ContinueOnError) }
