#!/usr/bin/env bash
# Runs a command (the gateway) and sends it SIGHUP every RELOAD_EVERY_SECS seconds (default
# 1), so the shared benchmark measures serving while the configuration is reloaded the whole
# time. Each SIGHUP re-reads, validates and swaps the whole configuration (its Lua scripts
# compiled again) through the one reloader. See docs/benchmarks.md#hot-reload.
#
#   CANDIDATE_AUTH_CMD='bash bench/reload-loop.sh ./target/release/sluicegate run -c bench/auth-lua.yaml' \
#     ROUNDS=2 bash ../shared/bench/run.sh 10
#
# SIGTERM/SIGINT to this script stop the gateway (it drains) and then the script.
set -u
every=${RELOAD_EVERY_SECS:-1}
"$@" &
child=$!
stop() {
  kill -TERM "$child" 2>/dev/null
  wait "$child"
  exit $?
}
trap stop TERM INT
while kill -0 "$child" 2>/dev/null; do
  sleep "$every" &
  wait $!
  kill -HUP "$child" 2>/dev/null
done
wait "$child"
