#!/usr/bin/env bash
# Runs the debug build of Fulcrum under valgrind's memcheck while real traffic goes through it
# (successful relays, half-closes, a refused backend, a client reset, an idle timeout), then stops it
# with SIGTERM and fails if valgrind reports any definitely or indirectly lost bytes or memory errors.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/ensure-packages valgrind binutils python3 libevent-dev pkg-config
OUT=.build/leakcheck
mkdir -p "$OUT"
rm -f "$OUT/echo.port" "$OUT/reset.port"
swift build --product fulcrum >/dev/null
# valgrind 3.19 cannot read the DWARF 5 that Swift emits; symbols stay, line tables go.
objcopy --strip-debug .build/debug/fulcrum "$OUT/fulcrum"

python3 - "$OUT" <<'PY' &
import socket, struct, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(128)
rst = socket.socket(); rst.bind(("127.0.0.1", 0)); rst.listen(128)
open(sys.argv[1] + "/reset.port", "w").write(str(rst.getsockname()[1]))
open(sys.argv[1] + "/echo.port", "w").write(str(srv.getsockname()[1]))
def reset_forever():                      # takes the request, then resets: exercises replay
    while True:
        c, _ = rst.accept()
        try:
            c.recv(100)
        except OSError:
            pass
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); c.close()
threading.Thread(target=reset_forever, daemon=True).start()
def serve(c):
    try:
        while (d := c.recv(65536)):
            c.sendall(d)
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass                              # the reset clients below
    c.close()
while True:
    c, _ = srv.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
ECHO_PID=$!
trap 'kill $ECHO_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do [ -s "$OUT/echo.port" ] && break; sleep 0.05; done
ECHO_PORT=$(cat "$OUT/echo.port")
RESET_PORT=$(cat "$OUT/reset.port")
REFUSED_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

cat >"$OUT/fulcrum.yaml" <<YAML
workers: 2
admin: {listen: 127.0.0.1:0}
access_log: {path: $OUT/access.log, format: json}
listeners:
  - {name: front, listen: 127.0.0.1:0, pool: app}
  - {name: resilient, listen: 127.0.0.1:0, pool: resilient}
  - {name: limited, listen: 127.0.0.1:0, pool: limited}
pools:
  app:
    backends: [127.0.0.1:$REFUSED_PORT, 127.0.0.1:$ECHO_PORT]
    idle_timeout: 500ms
  resilient:
    balance: least_connections
    backends: [127.0.0.1:$RESET_PORT, 127.0.0.1:$ECHO_PORT, 127.0.0.1:$REFUSED_PORT]
    health: {check: tcp, interval: 100ms, assume_healthy: true}
    breaker: {consecutive_failures: 2, base_ejection: 200ms}
    replay: {max_bytes: 64KiB}
    first_byte_timeout: 1s
    hedge_after: 20ms
    retry_budget: {ratio: 100%}
  limited:
    backends: [{address: 127.0.0.1:$ECHO_PORT, max_connections: 1}]
    queue: {size: 4, timeout: 3s}
YAML
valgrind --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
  --error-exitcode=99 --suppressions=Tests/valgrind-swift.supp --log-file="$OUT/valgrind.log" \
  "$OUT/fulcrum" run --config "$OUT/fulcrum.yaml" >"$OUT/fulcrum.log" 2>&1 &
FULCRUM_PID=$!
# A failed traffic step must not leave the proxy running under valgrind.
trap 'kill $ECHO_PID 2>/dev/null || true; kill -KILL $FULCRUM_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do grep -q "fulcrum ready" "$OUT/fulcrum.log" && break; sleep 0.1; done
PORT=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$OUT/fulcrum.log" | head -1 | cut -d: -f2)
RESILIENT=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$OUT/fulcrum.log" | sed -n 2p | cut -d: -f2)
LIMITED=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$OUT/fulcrum.log" | sed -n 3p | cut -d: -f2)

python3 - "$PORT" "$RESILIENT" "$LIMITED" <<'PY'
import select, socket, struct, sys, time
port = int(sys.argv[1])
limited = int(sys.argv[3])
def connect(p):
    c = socket.create_connection(("127.0.0.1", p)); c.settimeout(20); return c
holder = connect(limited); holder.sendall(b"h"); assert holder.recv(10) == b"h"
waiting = [connect(limited) for _ in range(3)]  # the queue: served, served, gone while waiting
for w in waiting: w.sendall(b"w")
time.sleep(0.05)
waiting.pop().close()
holder.close()
while waiting:                            # each freed slot goes to a waiter
    ready, _, _ = select.select(waiting, [], [], 20)
    assert ready, "no waiter served"
    assert ready[0].recv(10) == b"w"
    waiting.remove(ready[0]); ready[0].close()
h2 = connect(limited); h2.sendall(b"h"); assert h2.recv(10) == b"h"
late = connect(limited); late.sendall(b"l")
try:                                      # closed at the queue timeout (a reset: its bytes were never read)
    assert late.recv(10) == b""
except ConnectionResetError:
    pass
h2.close(); late.close()
for i in range(20):                       # clients that connect and close without a byte
    connect(port).close()
for i in range(100):                      # replays, breaker ejections, health checks, hedges
    c = socket.create_connection(("127.0.0.1", int(sys.argv[2]))); c.settimeout(20)
    c.sendall(b"resilient %d" % i); c.shutdown(socket.SHUT_WR)
    got = b""
    while (d := c.recv(65536)):
        got += d
    assert got == b"resilient %d" % i, (i, got)
    c.close()
for i in range(200):                      # relays that complete, some with large payloads
    c = socket.create_connection(("127.0.0.1", port)); c.settimeout(20)
    payload = bytes([i % 251]) * (1 << 20 if i % 50 == 0 else 100)
    c.sendall(payload); c.shutdown(socket.SHUT_WR)
    got = b""
    while (d := c.recv(1 << 20)):
        got += d
    assert got == payload, (i, len(got))
    c.close()
for i in range(20):                       # clients that reset mid-stream
    c = socket.create_connection(("127.0.0.1", port)); c.sendall(b"x" * 1000)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); c.close()
idle = socket.create_connection(("127.0.0.1", port)); idle.settimeout(20)
idle.sendall(b"hi"); idle.recv(10)
assert idle.recv(10) == b""               # closed by the idle timeout
held = socket.create_connection(("127.0.0.1", port)); held.sendall(b"held"); held.recv(10)
print("traffic done")
time.sleep(0.5)
PY
# Reloads under valgrind: one that drops a listener and its pool, adds a listener, removes and reweights
# backends and changes a strategy and the checks; then one with an invalid file, which changes nothing.
cat >"$OUT/reloaded.yaml" <<YAML
workers: 2
admin: {listen: 127.0.0.1:0}
access_log: {path: $OUT/access.log, format: logfmt}
listeners:
  - {name: front, listen: 127.0.0.1:$PORT, pool: app}
  - {name: resilient, listen: 127.0.0.1:$RESILIENT, pool: resilient}
  - {name: extra, listen: 127.0.0.1:0, pool: app}
pools:
  app:
    backends: [{address: 127.0.0.1:$ECHO_PORT, weight: 3}]
    idle_timeout: 500ms
  resilient:
    balance: p2c
    backends: [127.0.0.1:$ECHO_PORT, 127.0.0.1:$REFUSED_PORT]
    health: {check: tcp, interval: 100ms}
    breaker: {consecutive_failures: 3, base_ejection: 200ms}
    retry_budget: {ratio: 100%}
YAML
cp "$OUT/reloaded.yaml" "$OUT/fulcrum.yaml"
kill -HUP "$FULCRUM_PID"
for _ in $(seq 1 300); do grep -q "reload applied by every worker" "$OUT/fulcrum.log" && break; sleep 0.1; done
grep -q "reload applied by every worker" "$OUT/fulcrum.log" || { echo "leakcheck: the reload was not applied"; exit 1; }
EXTRA=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$OUT/fulcrum.log" | sed -n 4p | cut -d: -f2)
python3 - "$PORT" "$RESILIENT" "$EXTRA" <<'PY'
import socket, sys
for i in range(60):
    c = socket.create_connection(("127.0.0.1", int(sys.argv[1 + i % 3]))); c.settimeout(20)
    c.sendall(b"after reload %d" % i); c.shutdown(socket.SHUT_WR)
    got = b""
    while (d := c.recv(65536)):
        got += d
    assert got == b"after reload %d" % i, (i, got)
    c.close()
print("traffic after reload done")
PY
# The admin API: reads, a change answered once the workers applied it, an override cleared, bad requests,
# a metrics scrape, and a client that leaves before its answer.
ADMIN=$(grep -o 'admin API on http://127.0.0.1:[0-9]*' "$OUT/fulcrum.log" | tail -1 | cut -d: -f3)
python3 - "$ADMIN" "$ECHO_PORT" <<'PY'
import json, socket, sys, urllib.request
admin, echo = sys.argv[1], sys.argv[2]
base = "http://127.0.0.1:%s" % admin
def call(method, path, body=None):
    request = urllib.request.Request(base + path, method=method, data=body)
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
assert call("GET", "/status")[0] == 200
assert call("GET", "/metrics")[0] == 200
assert call("GET", "/")[0] == 200
backend = "/pools/app/backends/127.0.0.1:%s" % echo
assert call("POST", backend + "/drain")[0] == 200
assert call("POST", backend + "/weight", b'{"weight": 3}')[0] == 200
assert call("DELETE", backend + "/override")[0] == 200
assert call("GET", backend + "/events")[0] == 200
assert call("POST", backend + "/weight", b'{bad')[0] == 400
assert call("GET", "/nope")[0] == 404
for _ in range(5):                       # a client that asks for a change and leaves at once
    s = socket.create_connection(("127.0.0.1", int(admin)))
    s.sendall(("POST %s/disable HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n" % backend).encode())
    s.close()
assert call("POST", backend + "/enable")[0] == 200
print("admin requests done")
PY
echo "pools: [" >"$OUT/fulcrum.yaml"
kill -HUP "$FULCRUM_PID"
for _ in $(seq 1 300); do grep -q "reload failed" "$OUT/fulcrum.log" && break; sleep 0.1; done
grep -q "reload failed" "$OUT/fulcrum.log" || { echo "leakcheck: the invalid file was not reported"; exit 1; }
kill -TERM "$FULCRUM_PID"
set +e
wait "$FULCRUM_PID"
STATUS=$?
set -e
grep -E "definitely lost|indirectly lost|ERROR SUMMARY" "$OUT/valgrind.log" | sed 's/^==[0-9]*== //'
if [ "$STATUS" -ne 0 ]; then echo "leakcheck: FAILED (exit status $STATUS, see $OUT/valgrind.log)"; exit 1; fi
echo "leakcheck: no leaks, no memory errors"
