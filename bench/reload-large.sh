#!/usr/bin/env bash
# Serving while a large configuration reloads: ROUTES prefix routes (default 10,000) in a
# generated file, the gateway (one worker) and wrk on one CPU (CPU, default 1), so a reload
# competes with the worker for that core. Three wrk runs of SECS seconds (default 7): quiet,
# with RELOADS SIGHUPs (default 20, 0.3 s apart), quiet again; prints each run's p50, p99
# and req/s, and the gateway's CPU per reload. See docs/benchmarks.md#hot-reload.
#
#   BENCH_UPSTREAM=127.0.0.1:9000 bash bench/reload-large.sh [target/release/sluicegate]
#
# Needs wrk, curl and taskset, and an origin already listening at BENCH_UPSTREAM (the
# shared bench's origin, or any server answering GET /). Loopback only; the gateway is
# stopped by its PID.
set -euo pipefail
: "${BENCH_UPSTREAM:?set BENCH_UPSTREAM to a running origin (host:port)}"
bin="${1:-target/release/sluicegate}"
routes="${ROUTES:-10000}"
reloads="${RELOADS:-20}"
secs="${SECS:-7}"
cpu="${CPU:-1}"
port="${PORT:-18181}"
dir="$(mktemp -d)"
gw=""
cleanup() {
  if [ -n "$gw" ]; then kill "$gw" 2>/dev/null || true; wait "$gw" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

{
  printf 'workers: 1\nlisteners:\n  - address: 127.0.0.1:%s\n    http2: false\n' "$port"
  printf 'admin:\n  enabled: false\naccess_log:\n  target: off\n'
  printf 'upstreams:\n  - name: origin\n    targets: ["%s"]\nroutes:\n' "$BENCH_UPSTREAM"
  for i in $(seq 0 $((routes - 1))); do
    printf '  - name: r%s\n    match: {paths: /r%s/}\n    upstream: origin\n' "$i" "$i"
  done
} > "$dir/gateway.yaml"

taskset -c "$cpu" "$bin" run -c "$dir/gateway.yaml" > "$dir/gateway.log" 2>&1 &
gw=$!
for _ in $(seq 1 300); do
  curl -s -o /dev/null "http://127.0.0.1:$port/r1/" && break
  sleep 0.1
done
url="http://127.0.0.1:$port/r1/"
cpu_ns() { awk '{s += $1} END {printf "%.0f\n", s}' /proc/"$gw"/task/*/schedstat; }
run() {
  taskset -c "$cpu" wrk -t1 -c8 -d"${secs}s" --latency "$url" > "$dir/wrk.out"
  local p50 p99 rps
  p50=$(awk '$1 == "50%" {print $2}' "$dir/wrk.out")
  p99=$(awk '$1 == "99%" {print $2}' "$dir/wrk.out")
  rps=$(awk '$1 == "Requests/sec:" {print $2}' "$dir/wrk.out")
  echo "$1: p50 $p50 p99 $p99 req/s $rps"
}

taskset -c "$cpu" wrk -t1 -c8 -d2s "$url" > /dev/null
run "quiet"
before=$(grep -c "Configuration reloaded" "$dir/gateway.log" || true)
(
  sleep 0.5
  for _ in $(seq 1 "$reloads"); do
    kill -HUP "$gw"
    sleep 0.3
  done
) &
sender=$!
run "during $reloads reloads"
wait "$sender"
sleep 2
done_reloads=$(( $(grep -c "Configuration reloaded" "$dir/gateway.log" || true) - before ))
run "quiet again"

# CPU per reload, without traffic.
a=$(cpu_ns)
for _ in 1 2 3 4 5; do
  kill -HUP "$gw"
  sleep 1
done
b=$(cpu_ns)
echo "reloads done during traffic: $done_reloads of $reloads (SIGHUPs that arrive during a reload are merged)"
echo "gateway CPU per reload of $routes routes, no traffic: $(( (b - a) / 5000000 )) ms"
