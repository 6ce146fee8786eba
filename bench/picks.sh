#!/usr/bin/env bash
# Pick throughput per strategy and pool size, and proof that picks allocate nothing: the harness runs
# under valgrind with 2,000 and then 20,000 picks per case; equal allocation counts mean no pick allocates.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/ensure-packages valgrind binutils libevent-dev pkg-config
swift build -c release --product PickBenchmark >/dev/null
BIN=$(swift build -c release --show-bin-path)/PickBenchmark
"$BIN"
# valgrind 3.19 cannot read the DWARF 5 that Swift emits: measure a copy without debug info.
mkdir -p .build/picks
objcopy --strip-debug "$BIN" .build/picks/PickBenchmark
allocs() { valgrind .build/picks/PickBenchmark "$1" 2>&1 >/dev/null | sed -n 's/.*total heap usage: \([0-9,]*\) allocs.*/\1/p'; }
small=$(allocs 2000)
large=$(allocs 20000)
echo
echo "heap allocations for the whole run: $small with 2,000 picks per case, $large with 20,000 per case"
if [ "$small" = "$large" ]; then echo "picks allocate nothing"; else echo "picks allocate"; exit 1; fi
