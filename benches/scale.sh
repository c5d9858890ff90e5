#!/usr/bin/env bash
# A large registry on one node: registering MEMBERS members (256 bytes of
# metadata each) through CLIENTS sessions, a linearizable list of all, a new
# subscriber's whole first snapshot, resident memory once the allocator was
# trimmed, and a restart after kill -9 (to "listening", and to a
# linearizable list of all answered), then resident memory again.
#
# Usage: benches/scale.sh   (env: MEMBERS=100000 CLIENTS=64 PORT=27401,
# NODE_ARGS: more flags for fuddle-node, such as
# "--snapshot-every-commands 1000000" for a restart that re-applies every
# registration from the log; NODE: another fuddle-node binary to measure,
# such as an older build)
# Needs only the Rust toolchain and python3; binds 127.0.0.1 only; removes
# what it started and its temp dir when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

MEMBERS=${MEMBERS:-100000}
CLIENTS=${CLIENTS:-64}
PORT=${PORT:-27401}
HTTP_PORT=$((PORT + 1))
# The node trims its allocator every 20 s (node/src/memory.rs).
TRIM_WAIT=21

cargo build --release -q --bin fuddle-node --bin fuddle-bench
TARGET=$(cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
NODE=${NODE:-$TARGET/release/fuddle-node}
BENCH=${BENCH:-$TARGET/release/fuddle-bench}

WORK=$(mktemp -d)
NODE_PID=
BENCH_PID=
cleanup() {
  [[ -n $BENCH_PID ]] && kill "$BENCH_PID" 2>/dev/null || true
  [[ -n $NODE_PID ]] && kill -9 "$NODE_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
rss_mb() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

# Starts the node on the data dir; sets NODE_PID; returns once it listens.
start_node() {
  local out=$WORK/node.$1.out
  # shellcheck disable=SC2086 # NODE_ARGS is a list of flags.
  "$NODE" --data-dir "$WORK/data" --bind "127.0.0.1:$PORT" --http-bind "127.0.0.1:$HTTP_PORT" \
    ${NODE_ARGS:-} >"$out" 2>"$WORK/node.$1.log" &
  NODE_PID=$!
  for _ in $(seq 600); do
    grep -q 'listening on' "$out" && return 0
    sleep 0.01
  done
  echo "the node did not start; its log:" >&2
  cat "$WORK/node.$1.log" >&2
  exit 1
}

start_node first
echo "registering $MEMBERS members through $CLIENTS sessions"
"$BENCH" --endpoints "127.0.0.1:$PORT" scale --members "$MEMBERS" --clients "$CLIENTS" \
  --hold 600s >"$WORK/bench.out" 2>"$WORK/bench.err" &
BENCH_PID=$!
for _ in $(seq 6000); do
  grep -q '^holding' "$WORK/bench.err" && break
  sleep 0.1
done
grep -q '^holding' "$WORK/bench.err" || { cat "$WORK/bench.err" >&2; exit 1; }
sleep "$TRIM_WAIT"
LOADED_RSS=$(rss_mb "$NODE_PID")
DISK=$(du -sm "$WORK/data" | cut -f1)

kill -9 "$NODE_PID"
wait "$NODE_PID" 2>/dev/null || true
T0=$(now)
start_node second
T_LISTEN=$(now)
"$BENCH" --endpoints "127.0.0.1:$PORT" -o json scale --members 0 >"$WORK/restart.json"
# What the restart loaded from the snapshot and what it re-applied.
python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' \
  "http://127.0.0.1:$HTTP_PORT/metrics" | grep -E '^fuddle_raft_(snapshot|applied)_index' >"$WORK/metrics" || true
sleep "$TRIM_WAIT"
RESTART_RSS=$(rss_mb "$NODE_PID")
kill "$BENCH_PID" 2>/dev/null || true
wait "$BENCH_PID" 2>/dev/null || true
BENCH_PID=

echo "--- the run that registered"
cat "$WORK/bench.err" | grep -v '^holding' || true
echo "--- the restarted node (the log after its snapshot was re-applied)"
cat "$WORK/metrics"
python3 - "$WORK/restart.json" "$T0" "$T_LISTEN" "$LOADED_RSS" "$RESTART_RSS" "$DISK" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
t0, t_listen = float(sys.argv[2]), float(sys.argv[3])
listen = t_listen - t0
print(f"resident memory of the node that took the load, trimmed: {sys.argv[4]} MB")
print(f"data dir on disk: {sys.argv[6]} MB")
print(f"restart after kill -9: listening after {listen:.2f} s")
print(f"restart: a linearizable list of all {report['members']} members answered "
      f"{report['list_s']:.2f} s later, {listen + report['list_s']:.2f} s after exec")
print(f"restart: a new subscriber's whole first snapshot: {report['snapshot_s']:.2f} s")
print(f"resident memory after the restart, trimmed: {sys.argv[5]} MB")
PY
