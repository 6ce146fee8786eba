# Shared by the benchmark scripts: background processes killed on exit, and waiting for a port.
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() { # port [seconds]; the second argument allows for slow starts, e.g. under valgrind
  local tries=$(( ${2:-5} * 20 ))
  for _ in $(seq 1 "$tries"); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listening on port $1" >&2; exit 1
}
