package main

import (
	"io"

	"github.com/urfave/cli/v2"
)

// manDescription opens the man page, before urfave/cli's usage, options
// and commands. Its "# " headings become sections; EXAMPLES comes last, so
// the usage examples that follow it in the page belong to it.
const manDescription = `**tunnel** carries TCP connections over mutual TLS, as stunnel and
ghostunnel do. A **server** accepts clients from allowlisted addresses whose
certificates chain to its client CA and pass revocation checks, and carries
each of their streams to a named backend (a route). A **client** keeps a
session to a server and exposes routes on local ports. **tunnel check**
loads a configuration as a start would and reports every problem;
**tunnel cert** is a development CA.

Every flag has a key in the YAML file given with **--config** and a
**TUNNEL_*** environment variable; flags override the environment, which
overrides the file. Each command's flags are listed under COMMANDS below, and
by **tunnel COMMAND --help**.

# FILES

*/etc/tunnel/server.yaml*, */etc/tunnel/client.yaml*
: the configurations the Debian package installs (examples to edit).

*/etc/tunnel/server.env*, */etc/tunnel/client.env*
: optional **TUNNEL_*** overrides read by the systemd units.

*/lib/systemd/system/tunnel-server.service*, *tunnel-client.service*
: the units; they run as the system user **tunnel**.

# SIGNALS

**SIGHUP** (or **POST /reload** on the **--admin** listener) reloads the
config file, certificates, keys, CA bundles, CRL files, the allowlist, routes
and forwards without dropping the sessions that the new configuration still
accepts, and refetches the CRLs. **SIGINT** and **SIGTERM** stop accepting,
drain open streams for up to **--shutdown-timeout**, and exit.

# EXIT STATUS

**0** on success; **1** on a failure after start-up (logged as an event);
**2** on a configuration error (one line on standard error naming the flag
or key; nothing was started).

# SEE ALSO

**stunnel**(8), **openssl-s_client**(1), **systemctl**(1); the README and
docs/OPERATIONS.md in /usr/share/doc/tunnel.

# EXAMPLES
`

// manCommand is `tunnel man`: the tunnel(1) man page in roff, made from
// the command definitions, for `make man` and the Debian package. It is
// hidden from the help: operators read the page with man(1).
func manCommand(stdout io.Writer) *cli.Command {
	return &cli.Command{
		Name:   "man",
		Usage:  "print the tunnel(1) man page in roff",
		Hidden: true,
		Action: func(*cli.Context) error {
			// A fresh app, not set up: running urfave/cli's help command
			// once makes it its own subcommand (setup appends the shared
			// helpCommand to itself), and ToMan would recurse on it forever.
			app := newApp(io.Discard, io.Discard)
			app.Description = manDescription // the page's only; --help has none
			app.Flags = append(app.Flags, cli.HelpFlag, cli.VersionFlag)
			page, err := app.ToManWithSection(1)
			if err != nil {
				return err
			}
			_, err = io.WriteString(stdout, page)
			return err
		},
	}
}
