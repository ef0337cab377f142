#!/usr/bin/env bash
# scripts/fuzz.sh [FUZZTIME]: run every Go fuzz target of the module for
# FUZZTIME each (default 30s), one after another. A crash fails the run and
# go test writes the input under the package's testdata/fuzz/, where it stays
# as a regression case once committed.
#
# One failure is not a crash: Go before 1.27 can end a duration-bounded run
# with a bare "context deadline exceeded" when the deadline races a worker
# on a loaded machine (golang/go#75804), and writes no input. Such a run is
# said loudly and run once more; only a second one in a row fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fuzztime=${1:-30s}
status=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# inputs lists the failing inputs go test has written for target in dir.
inputs() { ls "$1/testdata/fuzz/$2" 2>/dev/null | sort || true; }

# fuzz runs target of pkg once: 0 on a clean run, 2 on the coordinator's
# deadline race (no input written), 1 on anything else.
fuzz() {
	local pkg=$1 target=$2 dir before
	dir=$(go list -f '{{.Dir}}' "$pkg")
	before=$(inputs "$dir" "$target")
	if go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" 2>&1 | tee "$log"; then
		return 0
	fi
	if [[ $(inputs "$dir" "$target") == "$before" ]] && grep -qxE '[[:space:]]*context deadline exceeded' "$log"; then
		return 2
	fi
	return 1
}

for pkg in $(go list ./...); do
	for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		echo "== $pkg $target ($fuzztime)"
		rc=0
		fuzz "$pkg" "$target" || rc=$?
		if [[ $rc -eq 2 ]]; then
			echo "!!! $target ended with 'context deadline exceeded' and wrote no input: the Go fuzz coordinator's deadline race (golang/go#75804), not a crash. Running it once more." >&2
			rc=0
			fuzz "$pkg" "$target" || rc=$?
		fi
		if [[ $rc -ne 0 ]]; then
			echo "!!! $target failed" >&2
			status=1
		fi
	done
done
exit $status
