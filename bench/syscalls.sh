#!/usr/bin/env bash
# System calls per operation, which are repeatable where wall-clock figures are not: Fulcrum and HAProxy
# (tcp mode), one worker thread each, in front of the same two Redis servers, each traced with
# `strace -c -f` (every thread of the process) while a fixed number of operations goes through it:
#   - per proxied connection: CONNECTIONS new connections of one PING each (redis-benchmark -k 0), so the
#     figure includes that PING's read and send;
#   - per RPC: REQUESTS GETs over 50 persistent connections (the 50 connections' own set-up is included,
#     about 0.003 calls per GET at the default count).
# Counts are divided by the operations; a call that failed is counted in `calls` and again, in brackets,
# as failed (e.g. the accept that ends a batch with EAGAIN).
#
#   bench/syscalls.sh                             # builds the release binary first
#   BIN=/path/to/fulcrum bench/syscalls.sh
#   BEFORE_BIN=/path/to/old/fulcrum bench/syscalls.sh   # also an older build, as `fulcrum_before`
#   CLIENTS=1 bench/syscalls.sh                   # one connection at a time (no accept queue forms)
#   DEFER_ACCEPT=1s bench/syscalls.sh             # Fulcrum's listener with defer_accept (BEFORE_BIN without it)
#
# The table goes to stdout and to bench/out/syscalls/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-20000}
CONNECTIONS=${CONNECTIONS:-5000}
CLIENTS=${CLIENTS:-10}
OUT=bench/out/syscalls
mkdir -p "$OUT"
./.ci/ensure-packages strace haproxy redis-server redis-tools libevent-dev pkg-config python3 >/dev/null
if [ -z "${BIN:-}" ]; then make --no-print-directory release >/dev/null; BIN=.build/release/fulcrum; fi

source bench/common.sh
for port in 16393 16394; do
  redis-server --port "$port" --save '' --appendonly no --bind 127.0.0.1 >"$OUT/redis-$port.log" 2>&1 &
  PIDS+=($!)
done
wait_port 16393; wait_port 16394

fulcrum_config() { # port [defer_accept]
  cat <<YAML
workers: 1
listeners:
  - {name: redis, listen: 127.0.0.1:$1, pool: redis${2:+, defer_accept: $2}}
pools:
  redis:
    backends: [127.0.0.1:16393, 127.0.0.1:16394]
YAML
}

cat >"$OUT/haproxy.cfg" <<CFG
global
  nbthread 1
  maxconn 8000
defaults
  mode tcp
  timeout connect 1s
  timeout client 10m
  timeout server 10m
frontend redis
  bind 127.0.0.1:17161
  default_backend redis
backend redis
  balance roundrobin
  server r1 127.0.0.1:16393
  server r2 127.0.0.1:16394
CFG

# One proxy at a time: start it, trace a run of each load, stop it.
measure() { # target, port, command...
  local target=$1 port=$2; shift 2
  "$@" >"$OUT/$target.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_port "$port" 10
  redis-cli -p "$port" ping >/dev/null # warm: first connections, lazily set-up state
  trace "$target" "$pid" conn redis-benchmark -p "$port" -c "$CLIENTS" -n "$CONNECTIONS" -k 0 -t ping_inline -q
  trace "$target" "$pid" rpc redis-benchmark -p "$port" -c 50 -n "$REQUESTS" -t get -q
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}

trace() { # target, pid, load name, load command...
  local target=$1 pid=$2 load=$3; shift 3
  strace -c -f -p "$pid" -o "$OUT/$target-$load.strace" 2>"$OUT/$target-$load.attach" &
  local tracer=$!
  # Ready once strace says it has attached: it prints one line ("Process N attached with K threads") after
  # attaching to every thread of the process.
  for _ in $(seq 1 200); do
    grep -q attached "$OUT/$target-$load.attach" && break
    sleep 0.05
  done
  "$@" >/dev/null
  kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
}

fulcrum_config 17061 "${DEFER_ACCEPT:-}" >"$OUT/fulcrum.yaml"
measure fulcrum 17061 "$BIN" run --config "$OUT/fulcrum.yaml" --log-level warning
TARGETS=(fulcrum)
if [ -n "${BEFORE_BIN:-}" ]; then
  fulcrum_config 17062 >"$OUT/fulcrum-before.yaml"
  measure fulcrum_before 17062 "$BEFORE_BIN" run --config "$OUT/fulcrum-before.yaml" --log-level warning
  TARGETS+=(fulcrum_before)
fi
measure haproxy 17161 haproxy -db -f "$OUT/haproxy.cfg"
TARGETS+=(haproxy)

python3 - "$OUT" "$CONNECTIONS" "$REQUESTS" "$CLIENTS" "${TARGETS[@]}" <<'PY' | tee "$OUT/table.md"
import sys
out, connections, requests, clients, targets = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]

def parse(path):
    """strace -c's summary: {syscall: (calls, errors)}."""
    counts = {}
    for line in open(path):
        fields = line.split()
        if len(fields) < 5 or not fields[0][0].isdigit() or fields[-1] == "total":
            continue
        name = fields[-1]
        if len(fields) == 6:
            calls, errors = int(fields[3]), int(fields[4])
        else:
            calls, errors = int(fields[3]), 0
        counts[name] = (calls, errors)
    return counts

loads = [("conn", connections, "per connection"), ("rpc", requests, "per RPC")]
data = {(t, l): parse(f"{out}/{t}-{l}.strace") for t in targets for l, _, _ in loads}
columns = [(t, l, n, title) for l, n, title in loads for t in targets]
names = sorted({name for counts in data.values() for name in counts},
               key=lambda name: -max(data[(t, l)].get(name, (0, 0))[0] / n for t, l, n, _ in columns))

def cell(counts, name, n):
    calls, errors = counts.get(name, (0, 0))
    if calls == 0:
        return "–"
    text = f"{calls / n:.2f}"
    if errors / n >= 0.005:
        text += f" ({errors / n:.2f} failed)"
    return text

print(f"| system call | " + " | ".join(f"{t}, {title}" for t, _, _, title in columns) + " |")
print("|---|" + "---:|" * len(columns))
for name in names:
    cells = [cell(data[(t, l)], name, n) for t, l, n, _ in columns]
    if all(c in ("–", "0.00") for c in cells):
        continue
    print(f"| `{name}` | " + " | ".join(cells) + " |")
totals = [f"**{sum(c for c, _ in data[(t, l)].values()) / n:.2f}**" for t, l, n, _ in columns]
print("| **total** | " + " | ".join(totals) + " |")
print()
print(f"{connections:,} connections of one PING each (redis-benchmark -c {clients} -k 0), {requests:,} GETs over 50 "
      "persistent connections (redis-benchmark -c 50); every thread of each proxy traced with strace -c -f. "
      "`connect` fails with EINPROGRESS by design (non-blocking).")
PY
