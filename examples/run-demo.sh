#!/usr/bin/env bash
# Starts the two demo Redis backends that examples/quickstart.yaml names, then Fulcrum in front of them.
# Ctrl-C stops Fulcrum (gracefully) and the backends.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=examples/run
mkdir -p "$RUN"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

for port in 6391 6392; do
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    >"$RUN/redis-$port.log" 2>&1 &
  PIDS+=($!)
done
for port in 6391 6392; do
  for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
done

cat <<MSG
Demo backends: redis-server on 127.0.0.1:6391 (weight 2) and 127.0.0.1:6392 (weight 1).
Fulcrum listens on 127.0.0.1:7000. In another terminal:

  redis-cli -p 7000 ping                                  # PONG, through the proxy
  for i in \$(seq 30); do redis-cli -p 7000 config get port | tail -1; done | sort | uniq -c   # ~20 vs ~10: weights 2:1
  redis-benchmark -p 7000 -c 50 -n 100000 -t get,set -q   # load through the proxy

Ctrl-C (SIGINT) drains open connections and stops.

MSG
# Once Fulcrum serves (its admin API accepts connections; it is bound after the listeners), say where
# its status page is.
(
  for _ in $(seq 1 600); do
    if (exec 3<>/dev/tcp/127.0.0.1/9901) 2>/dev/null; then
      printf '\nstatus page: http://127.0.0.1:9901/   (or: .build/release/fulcrum status --config examples/quickstart.yaml)\n\n'
      exit 0
    fi
    sleep 0.05
  done
) &
PIDS+=($!)
.build/release/fulcrum run --config examples/quickstart.yaml
