package main

import (
	"io"

	"github.com/urfave/cli/v2"
)

func serverCommand(stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "server",
		Usage: "accept mutual-TLS clients and carry their streams to named backends",
		Description: `Example:
   tunnel server --listen 0.0.0.0:8443 \
     --cert pki/tunnel.example.com.pem --key pki/tunnel.example.com-key.pem --ca pki/ca.pem \
     --allow 10.0.0.0/8 --allow ::1 --route db=127.0.0.1:5432 --route pg=unix:/run/postgresql/.s.PGSQL.5432

   Repeatable flags also take several values separated by commas or spaces
   (--route: spaces only). Exit status: 0 after a clean shutdown, 1 on a
   runtime failure, 2 on a configuration error.

   --config server.yaml reads every setting from a YAML file (docs/CONFIG.md);
   flags and TUNNEL_* variables override it. The certificate, key, CA, CRL
   files and the config file are watched: a change (or SIGHUP) reloads them,
   the allowlist, routes and per-route rules without dropping a connection
   the new configuration still accepts.`,
		Flags:        flagsOf(serverRole.settings()),
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			return serverRole.start(c, stderr)
		},
	}
}

func clientCommand(stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "client",
		Usage: "keep a mutual-TLS session to a server and expose its routes on local ports",
		Description: `Example:
   tunnel client --server tunnel.example.com:8443 \
     --cert pki/app1.pem --key pki/app1-key.pem --ca pki/ca.pem \
     --forward 127.0.0.1:15432=db --forward 16379=cache

   Then "psql -h 127.0.0.1 -p 15432" reaches route db on the server.
   Exit status: 0 after SIGINT/SIGTERM, 1 on a runtime failure, 2 on a
   configuration error (a forward port already taken is one).

   --config client.yaml reads every setting from a YAML file (docs/CONFIG.md);
   flags and TUNNEL_* variables override it. A change to the certificate,
   key, CA, CRL or config file (or SIGHUP) reloads them: the next dial
   presents the new certificate, and forwards that changed open or close.`,
		Flags:        flagsOf(clientRole.settings()),
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			return clientRole.start(c, stderr)
		},
	}
}
