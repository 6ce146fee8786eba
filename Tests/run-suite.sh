#!/usr/bin/env bash
# Runs `swift test` with the given arguments and, when it fails, repeats every failing test and the issues
# it recorded at the end of the output, where a truncated log still shows them.
set -uo pipefail
log=$(mktemp /tmp/fulcrum-test.XXXXXX)
trap 'rm -f "$log"' EXIT
"${SWIFT:-swift}" test "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then
	echo
	echo "==== failures (swift test $*) ===="
	# A recorded issue is the ✘ line plus its indented detail lines (↳).
	grep -A8 -E '^✘ Test .* (recorded an issue|failed)' "$log" | grep -E '^(✘|↳|--)' | head -200
	grep -E '^(.*error:|Fatal error|.*Crash)' "$log" | head -40
fi
exit "$status"
