#!/usr/bin/env bash
# Instructions per request of a gateway command, counted by callgrind: a deterministic
# A/B measure where CPU time moves by several percent between runs of the same binary.
#
#   BENCH_UPSTREAM=127.0.0.1:9000 bash bench/instructions.sh target/release/sluicegate run -c bench/plain.yaml
#   API_KEY=secret BENCH_UPSTREAM=... bash bench/instructions.sh target/release/sluicegate run -c bench/auth-lua.yaml
#
# Needs valgrind, wrk and curl, and an origin already listening at BENCH_UPSTREAM (the
# shared bench's origin, or any server answering GET /). The gateway listens on PORT
# (default 18080). Instrumentation is on only during the timed wrk run (SECS, default 5);
# the count is divided by the requests wrk completed. Expect the gateway to run ~50×
# slower under valgrind: compare counts, not the req/s it reaches. CG_OUT=FILE keeps the
# profile, for callgrind_annotate; VALGRIND_ARGS are added to valgrind's (a JIT, such as
# nginx-lua's LuaJIT, needs --smc-check=all-non-file).
set -euo pipefail
: "${BENCH_UPSTREAM:?set BENCH_UPSTREAM to a running origin (host:port)}"
export PORT="${PORT:-18080}" BENCH_UPSTREAM BENCH_API_KEY="${API_KEY:-${BENCH_API_KEY:-}}"
secs="${SECS:-5}"
out="$(mktemp -d)"
header=()
if [ -n "${API_KEY:-}" ]; then header=(-H "X-Api-Key: $API_KEY"); fi
valgrind --tool=callgrind --instr-atstart=no ${VALGRIND_ARGS:-} --callgrind-out-file="$out/cg.out" "$@" \
  > "$out/gateway.log" 2>&1 &
gw=$!
trap 'kill "$gw" 2>/dev/null || true; wait "$gw" 2>/dev/null || true; rm -rf "$out"' EXIT
for _ in $(seq 1 200); do
  curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
  sleep 0.2
done
wrk -t1 -c32 -d2s "${header[@]}" "http://127.0.0.1:$PORT/" > /dev/null
callgrind_control -i on "$gw" > /dev/null 2>&1
wrk -t1 -c32 -d"${secs}s" "${header[@]}" "http://127.0.0.1:$PORT/" > "$out/wrk.txt"
callgrind_control -i off "$gw" > /dev/null 2>&1
requests="$(grep -o '^ *[0-9]* requests' "$out/wrk.txt" | awk '{print $1}')"
kill "$gw"; wait "$gw" 2>/dev/null || true
total="$(callgrind_annotate "$out/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !seen {gsub(",", "", $1); print $1; seen = 1}')"
if [ -n "${CG_OUT:-}" ]; then cp "$out/cg.out" "$CG_OUT"; fi
echo "requests $requests, instructions $total, per request $((total / requests))"
