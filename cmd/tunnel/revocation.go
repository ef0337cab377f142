package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/tunnel-dev/tunnel/trust"
)

// revocationFlags are the CRL flags of both roles. The server checks the
// client's chain; the client checks the server's the same way.
func revocationFlags() []cli.Flag {
	d := trust.DefaultRevocationPolicy()
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "crl", EnvVars: []string{"TUNNEL_CRL"}, Usage: "CRL `FILE` (PEM or DER; repeatable), re-read on SIGHUP"},
		&cli.BoolFlag{Name: "crl-disable", EnvVars: []string{"TUNNEL_CRL_DISABLE"}, Usage: "turn revocation checking off entirely (logged loudly at start-up)"},
		&cli.BoolFlag{Name: "crl-fetch", Value: d.Fetch, EnvVars: []string{"TUNNEL_CRL_FETCH"}, Usage: "fetch CRLs from the CRL Distribution Points of the CA chain and of peer certificates"},
		&cli.BoolFlag{Name: "crl-end-entity-only", EnvVars: []string{"TUNNEL_CRL_END_ENTITY_ONLY"}, Usage: "check only the peer's leaf, not its intermediates"},
		&cli.BoolFlag{Name: "crl-deny-on-unavailable", EnvVars: []string{"TUNNEL_CRL_DENY_ON_UNAVAILABLE"}, Usage: "fail closed: refuse a certificate whose CRL cannot be had (default: allow with a crl_unavailable warning)"},
		&cli.BoolFlag{Name: "crl-enforce-expiration", Value: d.EnforceExpiration, EnvVars: []string{"TUNNEL_CRL_ENFORCE_EXPIRATION"}, Usage: "use a CRL past its nextUpdate only within --crl-stale-grace"},
		&cli.DurationFlag{Name: "crl-stale-grace", Value: d.StaleGrace, EnvVars: []string{"TUNNEL_CRL_STALE_GRACE"}, Usage: "how long an expired CRL is still used while it is refetched"},
		&cli.DurationFlag{Name: "crl-refresh-interval", EnvVars: []string{"TUNNEL_CRL_REFRESH_INTERVAL"}, Usage: "refetch every CRL this often (0: before each CRL's nextUpdate, clamped to [10m, 24h])"},
		&cli.BoolFlag{Name: "crl-allow-http", Value: d.FetchOptions.AllowHTTP, EnvVars: []string{"TUNNEL_CRL_ALLOW_HTTP"}, Usage: "fetch plain http Distribution Points (CRLs are signed, so this is the norm)"},
		&cli.DurationFlag{Name: "crl-fetch-timeout", Value: d.FetchOptions.Timeout, EnvVars: []string{"TUNNEL_CRL_FETCH_TIMEOUT"}, Usage: "limit on one CRL fetch, connect to last byte"},
		&cli.Int64Flag{Name: "crl-max-response-bytes", Value: d.FetchOptions.MaxBytes, EnvVars: []string{"TUNNEL_CRL_MAX_RESPONSE_BYTES"}, Usage: "largest CRL response accepted; a larger one is aborted"},
		&cli.DurationFlag{Name: "crl-bootstrap-timeout", Value: d.BootstrapTimeout, EnvVars: []string{"TUNNEL_CRL_BOOTSTRAP_TIMEOUT"}, Usage: "at start-up, how long to wait for the CA chain's CRLs, all together"},
	}
}

// crlFiles returns the --crl files.
func crlFiles(c *cli.Context) []string { return splitValues(c.StringSlice("crl"), ",") }

// revocationPolicy turns the CRL flags into a policy, naming the flag of any
// bad value.
func revocationPolicy(c *cli.Context) (trust.RevocationPolicy, error) {
	p := trust.DefaultRevocationPolicy()
	p.Disabled = c.Bool("crl-disable")
	p.Fetch = c.Bool("crl-fetch")
	p.EndEntityOnly = c.Bool("crl-end-entity-only")
	p.DenyOnUnavailable = c.Bool("crl-deny-on-unavailable")
	p.EnforceExpiration = c.Bool("crl-enforce-expiration")
	p.StaleGrace = c.Duration("crl-stale-grace")
	p.RefreshInterval = c.Duration("crl-refresh-interval")
	p.BootstrapTimeout = c.Duration("crl-bootstrap-timeout")
	p.FetchOptions.AllowHTTP = c.Bool("crl-allow-http")
	p.FetchOptions.Timeout = c.Duration("crl-fetch-timeout")
	p.FetchOptions.MaxBytes = c.Int64("crl-max-response-bytes")
	p.FetchOptions.UserAgent = "tunnel/" + version + " crl-fetcher"
	switch {
	case p.Disabled && len(crlFiles(c)) > 0:
		return p, flagError("--crl-disable", "given with --crl: the CRL files would be ignored; drop one of them")
	case p.Disabled && p.DenyOnUnavailable:
		return p, flagError("--crl-disable", "given with --crl-deny-on-unavailable: they contradict each other")
	case p.StaleGrace < 0:
		return p, flagError("--crl-stale-grace", "%v is negative", p.StaleGrace)
	case p.RefreshInterval < 0 || p.RefreshInterval > 0 && p.RefreshInterval < 1e9:
		return p, flagError("--crl-refresh-interval", "%v: want 0 (from nextUpdate) or at least 1s", p.RefreshInterval)
	case p.FetchOptions.Timeout <= 0:
		return p, flagError("--crl-fetch-timeout", "%v: must be positive", p.FetchOptions.Timeout)
	case p.BootstrapTimeout < 0:
		return p, flagError("--crl-bootstrap-timeout", "%v is negative", p.BootstrapTimeout)
	case p.FetchOptions.MaxBytes < 1<<10 || p.FetchOptions.MaxBytes > 1<<30:
		return p, flagError("--crl-max-response-bytes", "%d: want 1024 to %d", p.FetchOptions.MaxBytes, 1<<30)
	}
	return p, nil
}

// revocationSummary is the start-up log's one-line account of the policy.
func revocationSummary(p trust.RevocationPolicy, files int) string {
	if p.Disabled {
		return "disabled"
	}
	mode := "fail-open"
	if p.DenyOnUnavailable {
		mode = "fail-closed"
	}
	scope := "full chain"
	if p.EndEntityOnly {
		scope = "leaf only"
	}
	return fmt.Sprintf("%s, %s, %d CRL file(s), fetching %v", mode, scope, files, p.Fetch)
}
