#!/usr/bin/env bash
# Instruction counts of the data path, which are repeatable where wall-clock figures are not: runs the
# release binary (one worker) under callgrind in front of two Redis servers and reports
#   - instructions per forwarded chunk in the relay's I/O callback (read, write, bookkeeping), and
#   - instructions per proxied connection (accept to close, event loop included) for one PING each.
#
#   bench/callgrind.sh                    # builds the release binary first
#   BIN=/path/to/fulcrum bench/callgrind.sh
#   ACCESS_LOG=json bench/callgrind.sh    # with the access log on (json or logfmt), written to bench/out
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-20000}
CONNECTIONS=${CONNECTIONS:-3000}
OUT=bench/out/callgrind
mkdir -p "$OUT"
./.ci/ensure-packages valgrind binutils redis-server redis-tools libevent-dev pkg-config >/dev/null
if [ -z "${BIN:-}" ]; then make --no-print-directory release >/dev/null; BIN=.build/release/fulcrum; fi
# valgrind 3.19 cannot read the DWARF 5 that Swift's toolchain writes; the symbol table is enough.
strip --strip-debug -o "$OUT/fulcrum" "$BIN"
BIN=$OUT/fulcrum

source bench/common.sh
for port in 16391 16392; do
  redis-server --port "$port" --save '' --appendonly no --bind 127.0.0.1 >"$OUT/redis-$port.log" 2>&1 &
  PIDS+=($!)
done
wait_port 16391; wait_port 16392

ACCESS_LOG_KEY=""
if [ -n "${ACCESS_LOG:-}" ]; then
  ACCESS_LOG_KEY="access_log: {path: $PWD/$OUT/access.log, format: $ACCESS_LOG}"
fi

run() { # name, then the load command
  local name=$1; shift
  rm -f "$OUT/access.log"
  cat >"$OUT/fulcrum.yaml" <<YAML
workers: 1
$ACCESS_LOG_KEY
listeners:
  - {name: redis, listen: 127.0.0.1:17091, pool: redis}
pools:
  redis:
    backends: [127.0.0.1:16391, 127.0.0.1:16392]
YAML
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.out" "$BIN" run --config "$OUT/fulcrum.yaml" \
    --log-level warning >"$OUT/$name.log" 2>&1 &
  local pid=$!
  wait_port 17091 120
  # The readiness probe above was one connection; so is the baseline below.
  "$@" >/dev/null
  kill -TERM "$pid"; wait "$pid" || true
}

total() {
  callgrind_annotate "$1" >"$1.txt" 2>/dev/null
  awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }' "$1.txt"
}
inclusive() { # file, symbol pattern: the largest inclusive count of a function matching it
  callgrind_annotate --inclusive=yes --threshold=100 "$1" >"$1.inclusive.txt" 2>/dev/null
  awk -v pattern="$2" '$0 ~ pattern { gsub(",", "", $1); if ($1 + 0 > best) best = $1 + 0 } END { print best + 0 }' "$1.inclusive.txt"
}

run idle redis-cli -p 17091 ping
run rpc redis-benchmark -p 17091 -c 50 -n "$REQUESTS" -t get -q
run conn redis-benchmark -p 17091 -c 10 -n "$CONNECTIONS" -k 0 -t ping_inline -q

idle=$(total "$OUT/idle.out")
# The relay's socket callbacks: the client's, and the upstream's (reached through the connector that
# registered the socket; relayUpstreamCallback when a socket was attached without one, relayIOCallback in
# builds before the connector handed its registration over).
relay=0
for callback in relayIOCallback relayClientCallback relayUpstreamCallback connectorIOCallback; do
  relay=$(( relay + $(inclusive "$OUT/rpc.out" "$callback") ))
done
rpc=$(total "$OUT/rpc.out")
conn=$(total "$OUT/conn.out")
# Each GET is two forwarded chunks: the request one way, the answer the other.
echo "instructions per forwarded chunk (relay callback): $(( relay / (2 * REQUESTS) ))"
echo "instructions per GET round trip (whole process):   $(( (rpc - idle) / REQUESTS ))"
echo "instructions per proxied connection (one PING):    $(( (conn - idle) / CONNECTIONS ))"
if [ -n "${ACCESS_LOG:-}" ]; then
  echo "access log ($ACCESS_LOG) lines of the last run:      $(wc -l <"$OUT/access.log")"
fi
