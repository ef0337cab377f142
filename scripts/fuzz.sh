#!/usr/bin/env bash
# scripts/fuzz.sh [FUZZTIME]: run every Go fuzz target of the module for
# FUZZTIME each (default 30s), one after another. A crash fails the run and
# go test writes the input under the package's testdata/fuzz/, where it stays
# as a regression case once committed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fuzztime=${1:-30s}
status=0
for pkg in $(go list ./...); do
	for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		echo "== $pkg $target ($fuzztime)"
		if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"; then
			status=1
		fi
	done
done
exit $status
