#!/usr/bin/env bash
# scripts/spire/build.sh: build spire-server and spire-agent (SPIRE v1.13.3,
# pinned by the tool module beside this script, so the tunnel's own go.mod
# does not carry SPIRE's dependencies) into a cache directory that later runs
# reuse: $TUNNEL_SPIRE_DIR, or $HOME/.cache/tunnel-spire/v1.13.3. The SPIFFE
# tests (internal/spiretest) look there. Cold, this takes about 9 minutes on
# 2 cores; with both binaries cached it returns at once.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
version=1.13.3
dir=${TUNNEL_SPIRE_DIR:-$HOME/.cache/tunnel-spire/v$version}

have() { [[ -x $dir/$1 ]] && "$dir/$1" --version 2>&1 | grep -q "^$version"; }
if have spire-server && have spire-agent; then
	echo "spire $version: cached in $dir"
	exit 0
fi
mkdir -p "$dir"
echo "spire $version: building spire-server and spire-agent into $dir"
start=$(date +%s)
go build -trimpath -o "$dir/" github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
echo "spire $version: built in $(($(date +%s) - start)) s"
