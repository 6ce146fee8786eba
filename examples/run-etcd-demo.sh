#!/usr/bin/env bash
# Service discovery demo: starts etcd (on 127.0.0.1:23790, its data in a temporary directory), two Redis
# backends each with a `fulcrum register` sidecar, then Fulcrum on examples/etcd.yaml. Ctrl-C stops it all.
#   examples/run-etcd-demo.sh        (after `make release`; needs etcd-server and redis-server)
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/ensure-packages etcd-server etcd-client redis-server redis-tools
FULCRUM=.build/release/fulcrum
[ -x "$FULCRUM" ] || make --no-print-directory release
RUN=examples/run
mkdir -p "$RUN"
DATA=$(mktemp -d /tmp/fulcrum-etcd-demo.XXXXXX)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$DATA"; }
trap cleanup EXIT

etcd --name demo --data-dir "$DATA" \
  --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
  --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster demo=http://127.0.0.1:23800 >"$RUN/etcd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 200); do ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:23790 endpoint health >/dev/null 2>&1 && break; sleep 0.05; done

for port in 6393 6394; do
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >"$RUN/redis-$port.log" 2>&1 &
  PIDS+=($!)
  "$FULCRUM" register --etcd http://127.0.0.1:23790 --prefix /fulcrum/pools/redis/ --address "127.0.0.1:$port" \
    --check send_expect --send 'PING\r\n' --expect '+PONG' --interval 1s --ttl 3s >"$RUN/register-$port.log" 2>&1 &
  PIDS+=($!)
done

cat <<MSG
etcd on 127.0.0.1:23790; Redis on 127.0.0.1:6393 and :6394, each registered by a fulcrum register sidecar.
Fulcrum listens on 127.0.0.1:7100, status page http://127.0.0.1:9902/. In another terminal:

  ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:23790 get --prefix /fulcrum/pools/redis/   # the registrations
  redis-cli -p 7100 ping                                     # PONG, through the proxy
  redis-cli -p 6394 shutdown nosave                          # its sidecar's check fails: the key goes, the pool follows
  $FULCRUM status --admin 127.0.0.1:9902

MSG
"$FULCRUM" run --config examples/etcd.yaml
