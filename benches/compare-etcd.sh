#!/usr/bin/env bash
# Fuddle and etcd side by side on this machine, in one run.
#
# Starts a 3-node etcd and a 3-node Fuddle on 127.0.0.1 (temporary data
# dirs, free ports), drives the same workloads against both with
# fuddle-bench, and prints both results and their ratio; then does the same
# with one node each for a single writer. Everything it starts is stopped
# on exit, however it exits.
#
#   benches/compare-etcd.sh                                  # the full run
#   DURATION=3s SUBSCRIBERS=1000 benches/compare-etcd.sh     # a quick one
#   ROUNDS=3 DURATION=5s benches/compare-etcd.sh             # medians of three
#
# Settings (environment):
#   DURATION=10s      measured time of each write workload
#   WARMUP=1s         unmeasured writing before it
#   CLIENTS=256       concurrent writers of the many-writer workload
#   SUBSCRIBERS=10000 subscriptions / watch streams of the fan-out workloads
#   UPDATES=100       changes made in each fan-out workload
#   FANOUT_WRITERS="1 16"  writer counts of the fan-out workloads
#   FANOUT_CONNS=16   gRPC connections the subscribers are spread over
#   FANOUT_RATE="10 20"  updates/s of the paced fan-outs (one writer), one
#                     workload per rate: the same offered load for both,
#                     where delivery latency compares like with like; a
#                     rate not above 0 (or an empty list) is skipped
#   DEADLINE=60s      how long a fan-out waits for late deliveries
#   PAUSE=2           seconds of rest between two measurements
#   ROUNDS=1          measurements of each workload on each system; with
#                     more than one, the two take turns going first and
#                     the summary gives medians and each ratio's range
#   KEEP=1            keep the temporary dir (data and logs) for a post-mortem
#   RESULTS=FILE      also append every result (one JSON object a line) to FILE
#
# Each result line shows "cpu S+B cores": the cores the system's nodes
# (S, over the whole bench run, setup included) and the load generator (B,
# over the measured part) kept busy on average, out of $(nproc).
set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-1s}
CLIENTS=${CLIENTS:-256}
SUBSCRIBERS=${SUBSCRIBERS:-10000}
UPDATES=${UPDATES:-100}
FANOUT_WRITERS=${FANOUT_WRITERS:-1 16}
FANOUT_CONNS=${FANOUT_CONNS:-16}
FANOUT_RATE=${FANOUT_RATE-10 20}
DEADLINE=${DEADLINE:-60s}
PAUSE=${PAUSE:-2}
KEEP=${KEEP:-0}
RESULTS=${RESULTS:-}
ROUNDS=${ROUNDS:-1}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "compare-etcd: ROUNDS must be a whole number from 1, not '$ROUNDS'" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fuddle-vs-etcd.XXXXXX")

# Every process this script starts, so that the exit trap can stop them.
PIDS=()

log() { printf '%s\n' "$*" >&2; }
die() {
    log "compare-etcd: $*"
    exit 1
}

# Shows the end of some logs (the temporary dir goes away on exit).
show_logs() {
    local file
    for file in "$@"; do
        [[ -f $file ]] || continue
        log "--- $file (last lines)"
        tail -n 15 "$file" >&2
    done
}

# Stops the given processes: SIGTERM (Fuddle hands leadership over, etcd
# shuts down cleanly), then SIGKILL for any still there after 10 s.
stop() {
    local pid
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        forget "$pid"
    done
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((${#PIDS[@]})); then
        stop "${PIDS[@]}"
    fi
    if [[ $KEEP == 1 ]]; then
        log "compare-etcd: data and logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Installs a Debian package if its command is missing.
need() {
    local cmd=$1 package=$2
    command -v "$cmd" >/dev/null && return
    log "compare-etcd: $cmd is missing; installing Debian's $package"
    local sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq "$package" >&2
    command -v "$cmd" >/dev/null || die "installing $package did not provide $cmd"
}

# A TCP port on 127.0.0.1 that nothing listens on and this script has not
# handed out yet. Ports are random, so two runs at once rarely collide, and
# below Linux's ephemeral range (32768 and up by default), so that no
# outgoing connection takes one between its choice and its use.
TAKEN=" "
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 12000))
        [[ $TAKEN == *" $port "* ]] && continue
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue
        TAKEN+="$port "
        echo "$port"
        return
    done
}

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

need etcd etcd-server
need jq jq
need curl curl

log "compare-etcd: building fuddle-node, fuddle-cli and fuddle-bench (release)"
(cd "$ROOT" && cargo build --release --quiet -p fuddle-node -p fuddle-cli -p fuddle-bench)
TARGET_DIR=$(cd "$ROOT" && cargo metadata --no-deps --format-version 1 | jq -r .target_directory)
NODE=$TARGET_DIR/release/fuddle-node
CLI=$TARGET_DIR/release/fuddle-cli
BENCH=$TARGET_DIR/release/fuddle-bench

# --- etcd -------------------------------------------------------------------

# Starts an etcd cluster of $2 members named $1-N; sets ETCD_ENDPOINTS and
# ETCD_PIDS.
start_etcd() {
    local name=$1 size=$2 i
    local clients=() peers=() initial=()
    for i in $(seq "$size"); do
        clients+=("$(free_port)")
        peers+=("$(free_port)")
        initial+=("$name-$i=http://127.0.0.1:${peers[-1]}")
    done
    local cluster
    cluster=$(IFS=,; echo "${initial[*]}")
    ETCD_ENDPOINTS=()
    ETCD_PIDS=()
    for i in $(seq "$size"); do
        local client=${clients[i - 1]} peer=${peers[i - 1]}
        # A 4 GiB backend quota: far more than a run writes, and the size
        # etcd's own docs suggest for a busy cluster.
        etcd --name "$name-$i" \
            --data-dir "$WORK/$name-$i" \
            --listen-client-urls "http://127.0.0.1:$client" \
            --advertise-client-urls "http://127.0.0.1:$client" \
            --listen-peer-urls "http://127.0.0.1:$peer" \
            --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --initial-cluster "$cluster" \
            --initial-cluster-token "$name-$$" \
            --initial-cluster-state new \
            --quota-backend-bytes $((4 * 1024 * 1024 * 1024)) \
            --logger zap --log-outputs stderr \
            >"$WORK/$name-$i.log" 2>&1 &
        PIDS+=("$!")
        ETCD_PIDS+=("$!")
        ETCD_ENDPOINTS+=("127.0.0.1:$client")
    done
    local endpoint
    for endpoint in "${ETCD_ENDPOINTS[@]}"; do
        # /health answers true once the member sees a leader.
        wait_for 60 sh -c "curl -fsS http://$endpoint/health | grep -q '\"health\":\"true\"'" || {
            show_logs "$WORK/$name"-*.log
            die "etcd $endpoint did not become healthy"
        }
    done
    log "compare-etcd: etcd ($size nodes) healthy at ${ETCD_ENDPOINTS[*]}"
}

# --- Fuddle -----------------------------------------------------------------

# Starts a Fuddle cluster of $2 nodes named $1-N; sets FUDDLE_ENDPOINTS and
# FUDDLE_PIDS. The first node bootstraps; the others join it by gossip.
start_fuddle() {
    local name=$1 size=$2 i seed=
    FUDDLE_ENDPOINTS=()
    FUDDLE_PIDS=()
    for i in $(seq "$size"); do
        local join=()
        [[ -n $seed ]] && join=(--join "$seed")
        # Port 0: the node picks a free port and prints it on stdout (gossip
        # takes the same number on UDP).
        "$NODE" --data-dir "$WORK/$name-$i" \
            --bind 127.0.0.1:0 \
            --http-bind 127.0.0.1:0 \
            "${join[@]}" \
            >"$WORK/$name-$i.out" 2>"$WORK/$name-$i.log" &
        PIDS+=("$!")
        FUDDLE_PIDS+=("$!")
        wait_for 30 grep -q 'listening on' "$WORK/$name-$i.out" || {
            show_logs "$WORK/$name-$i.log"
            die "fuddle node $name-$i did not start"
        }
        local addr
        addr=$(sed -n 's/.* listening on \(.*\)$/\1/p' "$WORK/$name-$i.out" | head -n1)
        [[ -n $seed ]] || seed=$addr
        FUDDLE_ENDPOINTS+=("$addr")
    done
    local addrs
    addrs=$(IFS=,; echo "${FUDDLE_ENDPOINTS[*]}")
    wait_for 120 sh -c "'$CLI' --addr '$addrs' cluster status -o json |
        jq -e '(.leader // 0) != 0 and ([.nodes[] | select(.voter)] | length) == $size'" || {
        show_logs "$WORK/$name"-*.log
        die "fuddle ($size nodes) did not reach $size voters and a leader"
    }
    log "compare-etcd: fuddle ($size nodes) healthy at ${FUDDLE_ENDPOINTS[*]}"
}

# --- measuring --------------------------------------------------------------

SUMMARY=()
RAW=()

# CPU ticks (1/100 s) the given processes have used so far.
cpu_ticks() {
    local files=() pid
    for pid in "$@"; do
        files+=("/proc/$pid/stat")
    done
    # The command name in parentheses may hold spaces; utime and stime are
    # the 12th and 13th fields after it.
    awk '{ sub(/.*\) /, ""); split($0, f, " "); t += f[12] + f[13] } END { print t + 0 }' "${files[@]}"
}

# Runs fuddle-bench against one target; its JSON result, with the cores the
# target's nodes kept busy on average during the run added, goes to file $1.
bench() {
    local out=$1 target=$2 endpoints=$3
    shift 3
    local servers=("${ETCD_PIDS[@]}")
    [[ $target == fuddle ]] && servers=("${FUDDLE_PIDS[@]}")
    local ticks_before started
    ticks_before=$(cpu_ticks "${servers[@]}")
    started=$(date +%s.%N)
    # In the background and waited for, so that an interrupt reaches the
    # exit trap at once and the trap stops the bench as well.
    "$BENCH" --target "$target" --endpoints "$endpoints" -o json "$@" >"$out.bench" &
    local pid=$!
    PIDS+=("$pid")
    wait "$pid"
    forget "$pid"
    local cores
    cores=$(awk -v t0="$ticks_before" -v t1="$(cpu_ticks "${servers[@]}")" \
        -v w0="$started" -v w1="$(date +%s.%N)" 'BEGIN { printf "%.2f", (t1 - t0) / 100 / (w1 - w0) }')
    jq -c --argjson cores "$cores" '. + {server_cpu_cores: $cores}' "$out.bench" >"$out"
    RAW+=("$(cat "$out")")
    [[ -z $RESULTS ]] || cat "$out" >>"$RESULTS"
}

# Drops a process that has ended from the list the exit trap stops.
forget() {
    local keep=() p
    for p in "${PIDS[@]}"; do
        [[ $p == "$1" ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# One result as a line: throughput, latency percentiles, errors.
line() {
    jq -r '
        def ms: . * 100 | round / 100 | tostring + " ms";
        (if .workload == "write"
         then "\(.ops_per_s | round) ops/s"
         else "\(.deliveries_per_s | round) deliveries/s (\(.missing) missing, \(.repeated) repeated, \(.resyncs) resyncs, setup \(.setup_s * 10 | round / 10)s)"
         end) as $rate
        | "\($rate)  p50 \(.latency.p50_ms | ms)  p99 \(.latency.p99_ms | ms)  p99.9 \(.latency.p999_ms | ms)  max \(.latency.max_ms | ms)  cpu \(.server_cpu_cores)+\(.bench_cpu_cores // 0 | . * 100 | round / 100) cores  errors \(if .workload == "write" then .errors else .write_errors + .subscriber_errors end)\(if .first_error then " (first: \(.first_error))" else "" end)"
    ' <<<"$1"
}

# a / b as a plain number, or nothing when b is 0.
quotient() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.4f", a / b }'
}

# A quotient as a ratio to two decimals, or n/a for none.
as_ratio() {
    if [[ -n $1 ]]; then printf '%.2fx' "$1"; else printf 'n/a'; fi
}

# The numbers given, one a line, sorted; empty ones (no quotient) left out.
sorted() {
    printf '%s\n' "$@" | { grep -v '^$' || true; } | sort -g
}

# The median of the numbers given (the lower middle one of an even count).
median() {
    sorted "$@" | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'
}

# "min-max" of the numbers given, as ratios.
spread() {
    sorted "$@" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (NR) printf "%.2f-%.2fx", lo, hi; else printf "n/a" }'
}

# Runs one workload against etcd and Fuddle, ROUNDS times each, and prints
# each pair and its ratio. Each ratio compares two adjacent runs; with
# several rounds, the system that goes first alternates, so that a machine
# that speeds up or slows down during the run favours neither, and the
# summary takes medians.
compare() {
    local title=$1 etcd_endpoints=$2 fuddle_endpoints=$3
    shift 3
    local rate=.ops_per_s
    [[ $1 == fanout ]] && rate=.deliveries_per_s
    local round order target
    local etcd_rates=() fuddle_rates=() speeds=() p99s=()
    for round in $(seq "$ROUNDS"); do
        log ""
        log "compare-etcd: $title (round $round of $ROUNDS)"
        order=(etcd fuddle)
        ((round % 2)) || order=(fuddle etcd)
        for target in "${order[@]}"; do
            local endpoints=$etcd_endpoints
            [[ $target == fuddle ]] && endpoints=$fuddle_endpoints
            bench "$WORK/$target.json" "$target" "$endpoints" "$@"
            sleep "$PAUSE"
        done
        local etcd fuddle
        etcd=$(cat "$WORK/etcd.json")
        fuddle=$(cat "$WORK/fuddle.json")
        local etcd_rate fuddle_rate
        etcd_rate=$(jq "$rate" <<<"$etcd")
        fuddle_rate=$(jq "$rate" <<<"$fuddle")
        etcd_rates+=("$etcd_rate")
        fuddle_rates+=("$fuddle_rate")
        local speed p99
        speed=$(quotient "$fuddle_rate" "$etcd_rate")
        p99=$(quotient "$(jq .latency.p99_ms <<<"$fuddle")" "$(jq .latency.p99_ms <<<"$etcd")")
        speeds+=("$speed")
        p99s+=("$p99")
        if ((ROUNDS > 1)); then
            printf '\n== %s (round %s of %s) ==\n' "$title" "$round" "$ROUNDS"
        else
            printf '\n== %s ==\n' "$title"
        fi
        printf '  etcd    %s\n' "$(line "$etcd")"
        printf '  fuddle  %s\n' "$(line "$fuddle")"
        printf '  fuddle/etcd: throughput %s, p99 latency %s\n' "$(as_ratio "$speed")" "$(as_ratio "$p99")"
    done
    SUMMARY+=("$(printf '%-44s %12.0f %12.0f %9s %9s %13s' "$title" \
        "$(median "${etcd_rates[@]}")" "$(median "${fuddle_rates[@]}")" \
        "$(as_ratio "$(median "${speeds[@]}")")" "$(as_ratio "$(median "${p99s[@]}")")" \
        "$(spread "${speeds[@]}")")")
}

join_commas() {
    local IFS=,
    echo "$*"
}

printf 'Fuddle vs etcd on %s (%s cores, %s), %s\n' "$(hostname)" "$(nproc)" \
    "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)" "$(date -u +%FT%TZ)"
printf '%s; %s\n' "$(etcd --version | head -n1)" "$("$NODE" --version)"
printf 'DURATION=%s WARMUP=%s CLIENTS=%s SUBSCRIBERS=%s UPDATES=%s FANOUT_WRITERS="%s" FANOUT_CONNS=%s FANOUT_RATE="%s"\n' \
    "$DURATION" "$WARMUP" "$CLIENTS" "$SUBSCRIBERS" "$UPDATES" "$FANOUT_WRITERS" "$FANOUT_CONNS" "$FANOUT_RATE"

# Three nodes each.
start_etcd etcd3 3
start_fuddle fuddle3 3
E3=$(join_commas "${ETCD_ENDPOINTS[@]}")
F3=$(join_commas "${FUDDLE_ENDPOINTS[@]}")
THREE=("${ETCD_PIDS[@]}" "${FUDDLE_PIDS[@]}")

compare "write, 3 nodes, 1 client" "$E3" "$F3" \
    write --clients 1 --duration "$DURATION" --warmup "$WARMUP"
compare "write, 3 nodes, $CLIENTS clients" "$E3" "$F3" \
    write --clients "$CLIENTS" --duration "$DURATION" --warmup "$WARMUP"
for writers in $FANOUT_WRITERS; do
    compare "fanout, 3 nodes, $SUBSCRIBERS subs, $writers writers" "$E3" "$F3" \
        fanout --subscribers "$SUBSCRIBERS" --updates "$UPDATES" --writers "$writers" \
        --conns "$FANOUT_CONNS" --deadline "$DEADLINE"
done
# Unpaced, a writer writes as fast as it is answered, and a system that
# answers faster than it fans out builds a backlog: its delivery latency
# then measures the backlog. At a rate both sustain, it measures delivery.
# Several rates show up to where each system keeps its latency.
for rate in $FANOUT_RATE; do
    awk -v rate="$rate" 'BEGIN { exit !(rate > 0) }' || continue
    compare "fanout, 3 nodes, $SUBSCRIBERS subs, $rate/s paced" "$E3" "$F3" \
        fanout --subscribers "$SUBSCRIBERS" --updates "$UPDATES" --writers 1 \
        --rate "$rate" --conns "$FANOUT_CONNS" --deadline "$DEADLINE"
done
stop "${THREE[@]}"

# One node each: the single writer's latency without replication.
start_etcd etcd1 1
start_fuddle fuddle1 1
compare "write, 1 node, 1 client" "${ETCD_ENDPOINTS[0]}" "${FUDDLE_ENDPOINTS[0]}" \
    write --clients 1 --duration "$DURATION" --warmup "$WARMUP"

if ((ROUNDS > 1)); then
    printf '\n== summary: medians of %s rounds (throughput: ops/s or deliveries/s) ==\n' "$ROUNDS"
else
    printf '\n== summary (throughput: ops/s or deliveries/s) ==\n'
fi
printf '%-44s %12s %12s %9s %9s %13s\n' workload etcd fuddle ratio "p99 ratio" "ratio range"
printf '%s\n' "${SUMMARY[@]}"
printf '\n== raw results ==\n'
printf '%s\n' "${RAW[@]}"
