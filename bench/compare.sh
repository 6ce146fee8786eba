#!/usr/bin/env bash
# Side-by-side benchmark: Fulcrum, HAProxy (tcp mode) and nginx (stream module), configured alike, plus a
# direct connection, measured in one run with the targets interleaved: every repetition runs each workload
# on every target back to back, in an order that rotates from one repetition to the next.
#
#   bench/compare.sh                 # 3 repetitions, 1 worker each
#   REPS=5 WORKERS=2 bench/compare.sh  # (ROUNDS is an older name for REPS)
#   BEFORE_BIN=/path/to/old/fulcrum bench/compare.sh   # also an older build, as `fulcrum_before`
#   REPS=1 REQUESTS=20000 IPERF_SECONDS=2 bench/compare.sh   # a quick check that everything runs
#   NOTE="..." bench/compare.sh      # a sentence added to bench/RESULTS.md (e.g. what else ran on the machine)
#
# Fulcrum runs twice: `fulcrum` as configured by default (metrics are always on; no access log), and
# `fulcrum_log` with the access log on (json, to a file), so the access log's cost shows on its own row.
# HAProxy runs twice too: as configured by default (no splicing), and `haproxy_splice` with `option
# splice-auto`, measured on the bulk workloads only, where Fulcrum splices by default.
#
# Workloads: small RPCs over 50 persistent connections (redis-benchmark GET, without and with 16-deep
# pipelining), new connections (one PING each, redis-benchmark -k 0), and bulk throughput in each
# direction (one iperf3 stream, client to server and, with -R, server to client).
#
# Beside each throughput, the proxy's CPU per operation: the user and system time the proxy's processes
# used over the workload (utime + stime from /proc/PID/stat, every thread and worker process included),
# divided by its operations: µs per request, µs per connection, CPU seconds per GB. Each figure is the
# median over the repetitions, with its spread (±: the largest distance from the median to a repetition,
# in % of the median). A ratio whose repetitions overlap (the lowest ratio the repetitions allow is below
# 1 and the highest above it) is marked `noise`: the spread is larger than the difference it claims.
# Results go to stdout and bench/RESULTS.md; raw figures to bench/out/raw.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-${ROUNDS:-3}}
WORKERS=${WORKERS:-1}
REQUESTS=${REQUESTS:-200000}
CONNECTIONS=${CONNECTIONS:-$((REQUESTS / 10))}
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

# The processes whose CPU time each target's figures count (empty for the direct connection).
declare -A CPU_PIDS=([direct]="")

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
PIDS+=($!); CPU_PIDS[fulcrum]=$!
# The same with the access log on, on ports +10.
sed -e 's/17001/17011/; s/17002/17012/' -e "1a access_log: {path: $PWD/$OUT/access.log, format: json}" \
  "$OUT/fulcrum.yaml" >"$OUT/fulcrum-log.yaml"
rm -f "$OUT/access.log"
.build/release/fulcrum run --config "$OUT/fulcrum-log.yaml" --log-level warning >"$OUT/fulcrum-log.log" 2>&1 &
PIDS+=($!); CPU_PIDS[fulcrum_log]=$!
if [ -n "${BEFORE_BIN:-}" ]; then
  sed -e 's/17001/17021/; s/17002/17022/' "$OUT/fulcrum.yaml" >"$OUT/fulcrum-before.yaml"
  "$BEFORE_BIN" run --config "$OUT/fulcrum-before.yaml" --log-level warning >"$OUT/fulcrum-before.log" 2>&1 &
  PIDS+=($!); CPU_PIDS[fulcrum_before]=$!
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
PIDS+=($!); CPU_PIDS[haproxy]=$!
# HAProxy does not splice unless told to; Fulcrum does by default (`splice: auto`). A second HAProxy with
# `option splice-auto` shows the bulk workloads with both splicing (`haproxy_splice`, bulk only).
# (Its pipes need descriptors: a lower maxconn keeps its descriptor need under the usual limit of 20,000.)
sed -e 's/17101/17111/; s/17102/17112/; s/maxconn 8000/maxconn 4000/' -e '/^defaults/a\  option splice-auto' \
  "$OUT/haproxy.cfg" >"$OUT/haproxy-splice.cfg"
haproxy -db -f "$OUT/haproxy-splice.cfg" >"$OUT/haproxy-splice.log" 2>&1 &
PIDS+=($!); CPU_PIDS[haproxy_splice]=$!

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
nginx_master=$!
for port in 17001 17002 17011 17012 17101 17102 17112 17201 17202; do wait_port "$port"; done
# nginx's master and its worker processes.
CPU_PIDS[nginx]="$nginx_master $(pgrep -P "$nginx_master" | tr '\n' ' ')"

declare -A RPC_PORT=([direct]=16379 [fulcrum]=17001 [fulcrum_log]=17011 [fulcrum_before]=17021 [haproxy]=17101 [nginx]=17201)
declare -A BULK_PORT=([direct]=15201 [fulcrum]=17002 [fulcrum_log]=17012 [fulcrum_before]=17022 [haproxy]=17102 [haproxy_splice]=17112 [nginx]=17202)
TARGETS=(direct fulcrum fulcrum_log haproxy haproxy_splice nginx)
if [ -n "${BEFORE_BIN:-}" ]; then wait_port 17021; wait_port 17022; TARGETS+=(fulcrum_before); fi
WORKLOADS=(rpc rpc_pipelined new_connections bulk_up bulk_down)
RAW="$OUT/raw.tsv"
printf 'rep\ttarget\tworkload\tthroughput\toperations\tcpu_ticks\n' >"$RAW"

cpu_ticks() { # pids...: utime + stime of each, in clock ticks
  local total=0 pid stat fields
  for pid in "$@"; do
    stat=$(<"/proc/$pid/stat")
    read -ra fields <<<"${stat##*) }"
    total=$((total + fields[11] + fields[12]))
  done
  echo "$total"
}

rps() { # port, extra redis-benchmark args...: requests per second of the (one) test run
  local port=$1; shift
  redis-benchmark -h 127.0.0.1 -p "$port" --csv "$@" 2>/dev/null \
    | awk -F'","' 'NR>1 {gsub(/"/,"",$2); print $2; exit}'
}

iperf() { # port, extra iperf3 args...: "Gbit/s bytes" received
  local port=$1; shift
  iperf3 -c 127.0.0.1 -p "$port" -t "$IPERF_SECONDS" -J "$@" 2>/dev/null \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["end"]["sum_received"]; print(round(r["bits_per_second"]/1e9, 2), r["bytes"])'
}

measure() { # rep, target, workload: appends one line to $RAW
  local rep=$1 target=$2 workload=$3 pids=${CPU_PIDS[$2]} before after throughput operations result
  if [ "$target" = haproxy_splice ] && [ "${workload#bulk}" = "$workload" ]; then return; fi
  # shellcheck disable=SC2086
  before=$(cpu_ticks $pids)
  case $workload in
    rpc) throughput=$(rps "${RPC_PORT[$target]}" -c 50 -n "$REQUESTS" -t get -P 1); operations=$REQUESTS ;;
    rpc_pipelined) operations=$((REQUESTS * 5))
      throughput=$(rps "${RPC_PORT[$target]}" -c 50 -n "$operations" -t get -P 16) ;;
    new_connections) operations=$CONNECTIONS
      throughput=$(rps "${RPC_PORT[$target]}" -c 50 -n "$operations" -t ping_inline -k 0) ;;
    bulk_up) result=$(iperf "${BULK_PORT[$target]}"); throughput=${result% *}; operations=${result#* } ;;
    bulk_down) result=$(iperf "${BULK_PORT[$target]}" -R); throughput=${result% *}; operations=${result#* } ;;
  esac
  # shellcheck disable=SC2086
  after=$(cpu_ticks $pids)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$target" "$workload" "$throughput" "$operations" "$((after - before))" >>"$RAW"
}

for rep in $(seq 1 "$REPS"); do
  # Rotate the order each repetition, so no target always runs first (or right after another).
  shift_by=$(( (rep - 1) % ${#TARGETS[@]} ))
  order=("${TARGETS[@]:shift_by}" "${TARGETS[@]:0:shift_by}")
  for workload in "${WORKLOADS[@]}"; do
    for target in "${order[@]}"; do measure "$rep" "$target" "$workload"; done
  done
  echo "repetition $rep/$REPS done" >&2
done

python3 - "$RAW" "$REPS" "$WORKERS" "$(getconf CLK_TCK)" "$REQUESTS" "$CONNECTIONS" "$IPERF_SECONDS" "${NOTE:-}" <<'PY'
import statistics, sys, datetime, subprocess
raw, reps, workers, hz = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
requests, connections, iperf_seconds, note = int(sys.argv[5]), int(sys.argv[6]), sys.argv[7], sys.argv[8]
throughput, cpu, bounds = {}, {}, {}
for line in list(open(raw))[1:]:
    rep, target, workload, value, operations, ticks = line.rstrip("\n").split("\t")
    if not value:
        continue
    throughput.setdefault((workload, target), []).append(float(value))
    if target != "direct" and float(operations) > 0:
        # CPU time is read in clock ticks: each figure is known to within one tick either way.
        if workload.startswith("bulk"):
            per = lambda t: t / hz / (float(operations) / 1e9)  # CPU seconds per GB
        else:
            per = lambda t: t / hz * 1e6 / float(operations)  # µs per operation
        cpu.setdefault((workload, target), []).append(per(int(ticks)))
        bounds.setdefault((workload, target), []).append((per(max(0, int(ticks) - 1)), per(int(ticks) + 1)))

WORKLOADS = [("rpc", "RPC, 50 persistent connections", "GET/s", "µs/request"),
             ("rpc_pipelined", "RPC, 50 connections, pipeline 16", "GET/s", "µs/request"),
             ("new_connections", "New connections, one PING each", "conn/s", "µs/connection"),
             ("bulk_up", "Bulk, one iperf3 stream, client to server", "Gbit/s", "CPU s/GB"),
             ("bulk_down", "Bulk, one iperf3 stream, server to client", "Gbit/s", "CPU s/GB")]

def number(v):
    if v != v:
        return "–"
    return f"{v:,.0f}" if v >= 100 else f"{v:,.2f}" if v >= 1 else f"{v:.3f}"

def figure(table, key):
    """Median and spread (± % of the median to the farthest repetition)."""
    values = table.get(key, [])
    if not values:
        return "–"
    median = statistics.median(values)
    if len(values) < 2 or median == 0:
        return number(median)
    spread = max(abs(v - median) for v in values) / median * 100
    return f"{number(median)} ±{spread:.1f}%" if spread < 10 else f"{number(median)} ±{spread:.0f}%"

def ratio(table, a, b):
    """Median of a over median of b; `noise` when the repetitions' ranges overlap (for CPU, each figure
    widened by the clock tick it was measured in)."""
    x, y = table.get(a, []), table.get(b, [])
    if not x or not y or statistics.median(y) == 0:
        return "–"
    r = statistics.median(x) / statistics.median(y)
    text = f"{r:.2f}"
    if table is cpu:
        xl, xh = min(l for l, _ in bounds[a]), max(h for _, h in bounds[a])
        yl, yh = min(l for l, _ in bounds[b]), max(h for _, h in bounds[b])
        if yh > 0 and (yl == 0 or xl / yh <= 1 <= xh / yl):
            text += " noise"
    elif len(x) > 1 and len(y) > 1 and min(x) / max(y) <= 1 <= max(x) / min(y):
        text += " noise"
    return text

targets = ["direct", "fulcrum", "haproxy", "nginx"]
out = ["Throughput (higher is better; ratios above 1 favour Fulcrum):", "",
       "| workload | unit | " + " | ".join(targets) + " | fulcrum / haproxy | fulcrum / nginx | fulcrum / direct |",
       "|---|---|" + "---:|" * (len(targets) + 3)]
for key, title, unit, _ in WORKLOADS:
    cells = [figure(throughput, (key, t)) for t in targets]
    ratios = [ratio(throughput, (key, "fulcrum"), (key, t)) for t in ("haproxy", "nginx", "direct")]
    out.append(f"| {title} | {unit} | " + " | ".join(cells + ratios) + " |")

proxies = ["fulcrum", "haproxy", "nginx"]
out += ["", "CPU of the proxy per operation (lower is better; ratios below 1 favour Fulcrum):", "",
        "| workload | unit | " + " | ".join(proxies) + " | fulcrum / haproxy | fulcrum / nginx |",
        "|---|---|" + "---:|" * (len(proxies) + 2)]
for key, title, _, unit in WORKLOADS:
    cells = [figure(cpu, (key, t)) for t in proxies]
    ratios = [ratio(cpu, (key, "fulcrum"), (key, t)) for t in ("haproxy", "nginx")]
    out.append(f"| {title} | {unit} | " + " | ".join(cells + ratios) + " |")

# The access log's cost, and an older build if one was given, against the same run's figures.
variants = [t for t in ("haproxy_splice", "fulcrum_log", "fulcrum_before") if any(k[1] == t for k in throughput)]
for v in variants:
    what = {"haproxy_splice": "HAProxy with `option splice-auto` (bulk only)",
            "fulcrum_log": "Fulcrum with the access log on (json, to a file)",
            "fulcrum_before": "The older build (BEFORE_BIN)"}[v]
    out += ["", f"{what}, against Fulcrum as configured by default and HAProxy in the same run:", "",
            f"| workload | {v} | {v} / fulcrum | {v} / haproxy | CPU per operation | CPU {v} / fulcrum | CPU {v} / haproxy |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for key, title, unit, cpu_unit in WORKLOADS:
        if (key, v) not in throughput:
            continue
        out.append(f"| {title} ({unit}; CPU in {cpu_unit}) | {figure(throughput, (key, v))} | "
                   f"{ratio(throughput, (key, v), (key, 'fulcrum'))} | {ratio(throughput, (key, v), (key, 'haproxy'))} | "
                   f"{figure(cpu, (key, v))} | {ratio(cpu, (key, v), (key, 'fulcrum'))} | {ratio(cpu, (key, v), (key, 'haproxy'))} |")
table = "\n".join(out)
print(table)
versions = subprocess.run("haproxy -v | head -1; nginx -v 2>&1; redis-server --version; iperf3 --version | head -1",
                          shell=True, capture_output=True, text=True).stdout.strip().replace("\n", "; ")
cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
with open("bench/RESULTS.md", "w") as f:
    f.write("# Benchmark results\n\n")
    f.write(f"Produced by `bench/compare.sh` on {datetime.date.today()} (REPS={reps} WORKERS={workers} "
            f"REQUESTS={requests} CONNECTIONS={connections} IPERF_SECONDS={iperf_seconds}): {workers} worker(s) "
            f"per proxy, median of {reps} interleaved repetition(s) with the spread (± to the farthest repetition), "
            f"all on 127.0.0.1 of one {cores}-core machine (clients, proxies and backends share the cores). "
            "CPU is the proxy processes' user + system time over the workload (/proc/PID/stat), divided by its "
            "operations; it is read in clock ticks, so each CPU figure counts as known to within one tick. "
            "A ratio marked `noise` is one the repetitions do not separate from 1."
            + (" With one repetition there is no spread to judge by." if reps < 2 else "")
            + (f" {note}" if note else "") + "\n\n")
    f.write(table + "\n\n")
    f.write(f"Versions: {versions}.\n")
PY
