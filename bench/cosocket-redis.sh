#!/usr/bin/env bash
# A Redis GET per request over a pooled cosocket: Sluicegate against nginx + lua-nginx-module
# (the OpenResty engine), the same Lua script on both (bench/cosocket/get.lua), side by side
# in one run. The server under test is pinned to CPU 1; wrk and redis-server share CPU 0.
# Prints req/s and CPU time per request of each server (utime+stime from /proc).
#
#   cargo build --release && bash bench/cosocket-redis.sh [SECONDS] [ROUNDS]
#
# Needs redis-server, nginx, libnginx-mod-http-lua and wrk (bash ../shared/bench/setup.sh
# installs the last three). Everything runs on loopback, on free ports, in a temp dir; every
# process started here is stopped by PID on exit.
set -euo pipefail
secs=${1:-10}
rounds=${2:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/sluicegate"
for tool in redis-server nginx wrk taskset; do
  command -v "$tool" >/dev/null || { echo "cosocket-redis.sh: $tool is missing" >&2; exit 2; }
done
[ -x "$bin" ] || { echo "cosocket-redis.sh: build first: cargo build --release" >&2; exit 2; }
dir=$(mktemp -d)
chmod 755 "$dir"  # nginx workers run as an unprivileged user and read get.lua
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port); sg_port=$(free_port); ngx_port=$(free_port)

taskset -c 0 redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$dir" --daemonize no >"$dir/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$redis_port" set bench "$(printf 'v%.0s' $(seq 64))" >/dev/null

sed "s/@REDIS_PORT@/$redis_port/" "$root/bench/cosocket/get.lua" >"$dir/get.lua"
cat >"$dir/sluicegate.yaml" <<YAML
workers: 1
listeners: [{address: "127.0.0.1:$sg_port", http2: false}]
admin: {enabled: false}
access_log: {target: "off"}
routes:
  - name: get
    plugins:
      - name: lua
        config: {name: redis-get, phase: content, file: get.lua}
YAML
mkdir -p "$dir/nginx"
sed -e "s/@PORT@/$ngx_port/" -e "s#@SCRIPT@#$dir/get.lua#" "$root/bench/cosocket/nginx.conf.in" >"$dir/nginx/nginx.conf"

taskset -c 1 "$bin" run -c "$dir/sluicegate.yaml" >"$dir/sluicegate.log" 2>&1 &
sg_pid=$!; pids+=($sg_pid)
taskset -c 1 nginx -e stderr -p "$dir/nginx" -c "$dir/nginx/nginx.conf" >"$dir/nginx.log" 2>&1 &
ngx_pid=$!; pids+=($ngx_pid)
sleep 1
for port in "$sg_port" "$ngx_port"; do
  body=$(curl -sS "http://127.0.0.1:$port/")
  [ "${#body}" = 64 ] || { echo "cosocket-redis.sh: port $port answered '$body'" >&2; for f in "$dir"/*.log; do echo "== $f"; tail -n 5 "$f"; done >&2; exit 1; }
done

# CPU ticks (utime+stime) of a process and its children threads/processes.
ticks() { # pid...
  local total=0
  for p in "$@"; do
    for t in /proc/"$p"/task/*/stat; do
      read -r -a f <"$t" || continue
      total=$((total + f[13] + f[14]))
    done
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)
measure() { # name port pids...
  local name=$1 port=$2; shift 2
  local all=("$@")
  for p in "$@"; do all+=($(pgrep -P "$p" || true)); done
  taskset -c 0 wrk -t1 -c32 -d2s "http://127.0.0.1:$port/" >/dev/null
  local before; before=$(ticks "${all[@]}")
  local out; out=$(taskset -c 0 wrk -t1 -c32 -d"${secs}s" "http://127.0.0.1:$port/")
  local after; after=$(ticks "${all[@]}")
  local reqs; reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  local rps; rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  local non2xx; non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  python3 -c "import sys; t=($after-$before)/$hz; print(f'{sys.argv[1]:<14} {float(sys.argv[2]):>10,.0f} req/s  {t*1e6/int(sys.argv[3]):6.1f} us/req  non-2xx {sys.argv[4] or 0}')" \
    "$name" "$rps" "$reqs" "$non2xx"
}
for r in $(seq "$rounds"); do
  echo "round $r"
  measure nginx-lua "$ngx_port" "$ngx_pid"
  measure sluicegate "$sg_port" "$sg_pid"
done
