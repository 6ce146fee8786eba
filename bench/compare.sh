#!/usr/bin/env bash
# Side-by-side benchmark: Fulcrum, HAProxy (tcp mode) and nginx (stream module), configured alike, plus a
# direct connection, measured in one run with the targets interleaved round by round.
#
#   bench/compare.sh                 # 3 rounds, 1 worker each
#   ROUNDS=5 WORKERS=2 bench/compare.sh
#   BEFORE_BIN=/path/to/old/fulcrum bench/compare.sh   # also an older build, as `fulcrum_before`
#
# Fulcrum runs twice: `fulcrum` as configured by default (metrics are always on; no access log), and
# `fulcrum_log` with the access log on (json, to a file), so the access log's cost shows on its own row.
#
# Rows: small RPCs over 50 persistent connections (redis-benchmark GET, without and with 16-deep
# pipelining), new connections per second (one PING per connection), and bulk throughput (iperf3, one
# stream). Each figure is the median over the rounds. Results go to stdout and bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-1}
REQUESTS=${REQUESTS:-200000}
IPERF_SECONDS=${IPERF_SECONDS:-5}
OUT=bench/out
mkdir -p "$OUT"

.ci/ensure-packages haproxy nginx-light libnginx-mod-stream redis-server redis-tools iperf3 libevent-dev pkg-config python3
make --no-print-directory release >/dev/null

source bench/common.sh

# Backends: two Redis servers and one iperf3 server.
for port in 16379 16380; do
  redis-server --port "$port" --save '' --appendonly no --bind 127.0.0.1 --daemonize no >"$OUT/redis-$port.log" 2>&1 &
  PIDS+=($!)
done
iperf3 -s -B 127.0.0.1 -p 15201 >"$OUT/iperf3-server.log" 2>&1 &
PIDS+=($!)
wait_port 16379; wait_port 16380; wait_port 15201

cat >"$OUT/fulcrum.yaml" <<YAML
workers: $WORKERS
listeners:
  - {name: redis, listen: 127.0.0.1:17001, pool: redis}
  - {name: iperf, listen: 127.0.0.1:17002, pool: iperf}
pools:
  redis:
    backends: [127.0.0.1:16379, 127.0.0.1:16380]
  iperf:
    backends: [127.0.0.1:15201]
YAML
.build/release/fulcrum run --config "$OUT/fulcrum.yaml" --log-level warning >"$OUT/fulcrum.log" 2>&1 &
PIDS+=($!)
# The same with the access log on, on ports +10.
sed -e 's/17001/17011/; s/17002/17012/' -e "1a access_log: {path: $PWD/$OUT/access.log, format: json}" \
  "$OUT/fulcrum.yaml" >"$OUT/fulcrum-log.yaml"
rm -f "$OUT/access.log"
.build/release/fulcrum run --config "$OUT/fulcrum-log.yaml" --log-level warning >"$OUT/fulcrum-log.log" 2>&1 &
PIDS+=($!)
if [ -n "${BEFORE_BIN:-}" ]; then
  sed -e 's/17001/17021/; s/17002/17022/' "$OUT/fulcrum.yaml" >"$OUT/fulcrum-before.yaml"
  "$BEFORE_BIN" run --config "$OUT/fulcrum-before.yaml" --log-level warning >"$OUT/fulcrum-before.log" 2>&1 &
  PIDS+=($!)
fi

cat >"$OUT/haproxy.cfg" <<CFG
global
  nbthread $WORKERS
  maxconn 8000
defaults
  mode tcp
  timeout connect 1s
  timeout client 10m
  timeout server 10m
frontend redis
  bind 127.0.0.1:17101
  default_backend redis
backend redis
  balance roundrobin
  server r1 127.0.0.1:16379
  server r2 127.0.0.1:16380
frontend iperf
  bind 127.0.0.1:17102
  default_backend iperf
backend iperf
  server i1 127.0.0.1:15201
CFG
haproxy -db -f "$OUT/haproxy.cfg" >"$OUT/haproxy.log" 2>&1 &
PIDS+=($!)

cat >"$OUT/nginx.conf" <<CFG
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes $WORKERS;
daemon off;
pid $PWD/$OUT/nginx.pid;
error_log $PWD/$OUT/nginx-error.log warn;
worker_rlimit_nofile 16000;
events { worker_connections 8000; }
stream {
  upstream redis { server 127.0.0.1:16379; server 127.0.0.1:16380; }
  server { listen 127.0.0.1:17201 reuseport; proxy_pass redis; proxy_connect_timeout 1s; }
  upstream iperf { server 127.0.0.1:15201; }
  server { listen 127.0.0.1:17202; proxy_pass iperf; }
}
CFG
nginx -p "$PWD/$OUT" -c "$PWD/$OUT/nginx.conf" >"$OUT/nginx.log" 2>&1 &
PIDS+=($!)
for port in 17001 17002 17011 17012 17101 17102 17201 17202; do wait_port "$port"; done

declare -A RPC_PORT=([direct]=16379 [fulcrum]=17001 [fulcrum_log]=17011 [fulcrum_before]=17021 [haproxy]=17101 [nginx]=17201)
declare -A BULK_PORT=([direct]=15201 [fulcrum]=17002 [fulcrum_log]=17012 [fulcrum_before]=17022 [haproxy]=17102 [nginx]=17202)
TARGETS=(direct fulcrum fulcrum_log haproxy nginx)
if [ -n "${BEFORE_BIN:-}" ]; then wait_port 17021; wait_port 17022; TARGETS+=(fulcrum_before); fi
RAW="$OUT/raw.tsv"
: >"$RAW"

rps() { # port, extra redis-benchmark args...
  local port=$1; shift
  redis-benchmark -h 127.0.0.1 -p "$port" -c 50 --csv "$@" 2>/dev/null \
    | awk -F'","' 'NR>1 {gsub(/"/,"",$2); print $2; exit}'
}

for round in $(seq 1 "$ROUNDS"); do
  for target in "${TARGETS[@]}"; do
    p=${RPC_PORT[$target]}
    printf '%s\trpc\t%s\n' "$target" "$(rps "$p" -n "$REQUESTS" -t get -P 1)" >>"$RAW"
    printf '%s\trpc_pipelined\t%s\n' "$target" "$(rps "$p" -n $((REQUESTS * 5)) -t get -P 16)" >>"$RAW"
    printf '%s\tnew_connections\t%s\n' "$target" "$(rps "$p" -n $((REQUESTS / 10)) -t ping -k 0)" >>"$RAW"
    gbps=$(iperf3 -c 127.0.0.1 -p "${BULK_PORT[$target]}" -t "$IPERF_SECONDS" -J 2>/dev/null \
      | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9, 2))')
    printf '%s\tbulk_gbps\t%s\n' "$target" "$gbps" >>"$RAW"
  done
  echo "round $round/$ROUNDS done" >&2
done

python3 - "$RAW" "$ROUNDS" "$WORKERS" <<'PY'
import statistics, sys, datetime, subprocess
raw, rounds, workers = sys.argv[1], sys.argv[2], sys.argv[3]
data = {}
for line in open(raw):
    target, row, value = line.rstrip("\n").split("\t")
    if value:
        data.setdefault(row, {}).setdefault(target, []).append(float(value))
rows = [("rpc", "RPC, 50 persistent connections (GET/s)"),
        ("rpc_pipelined", "RPC, 50 connections, pipeline 16 (GET/s)"),
        ("new_connections", "New connections, one PING each (conn/s)"),
        ("bulk_gbps", "Bulk throughput, one iperf3 stream (Gbit/s)")]
def med(row, target):
    values = data.get(row, {}).get(target, [])
    return statistics.median(values) if values else float("nan")
def fmt(v):
    return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
out = ["| benchmark | direct | fulcrum | haproxy | nginx | fulcrum / haproxy | fulcrum / nginx | fulcrum / direct |",
       "|---|---:|---:|---:|---:|---:|---:|---:|"]
for key, title in rows:
    d, f, h, n = (med(key, t) for t in ("direct", "fulcrum", "haproxy", "nginx"))
    out.append(f"| {title} | {fmt(d)} | {fmt(f)} | {fmt(h)} | {fmt(n)} | {f/h:.2f} | {f/n:.2f} | {f/d:.2f} |")
# The access log's cost, and an older build if one was given, against the same HAProxy figures.
others = [t for t in ("fulcrum_log", "fulcrum_before") if any(t in data.get(k, {}) for k, _ in rows)]
if others:
    out += ["", "| benchmark | " + " | ".join(f"{t} | {t} / haproxy | {t} / fulcrum" for t in others) + " |",
            "|---|" + "---:|---:|---:|" * len(others)]
    for key, title in rows:
        f, h = med(key, "fulcrum"), med(key, "haproxy")
        cells = []
        for t in others:
            v = med(key, t)
            cells.append(f"{fmt(v)} | {v/h:.2f} | {v/f:.2f}")
        out.append(f"| {title} | " + " | ".join(cells) + " |")
table = "\n".join(out)
print(table)
versions = subprocess.run("haproxy -v | head -1; nginx -v 2>&1; redis-server --version", shell=True,
                          capture_output=True, text=True).stdout.strip().replace("\n", "; ")
with open("bench/RESULTS.md", "w") as f:
    f.write("# Benchmark results\n\n")
    f.write(f"Produced by `bench/compare.sh` on {datetime.date.today()}: {workers} worker(s) per proxy, "
            f"median of {rounds} interleaved rounds, all on 127.0.0.1 of one {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()}-core machine "
            "(clients, proxies and backends share the cores). Ratios above 1 favour Fulcrum.\n\n")
    f.write(table + "\n\n")
    f.write(f"Versions: {versions}.\n")
PY
