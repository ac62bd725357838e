#!/usr/bin/env bash
# bench/compare.sh: redis and ringkv side by side on this machine, everything on loopback.
#
#   1. redis-benchmark -c 50 -r 100000 -d 100 -t set, then -t get, against one redis-server
#      (no persistence; the targets' reference), the same with every write fsynced
#      (appendfsync always; shown for reference) and against a ringkv cluster of BENCH_NODES nodes (default 3; N=3,
#      R=W=2, fjall) via RESP, with the CPU the servers used per request;
#   2. `ringkv bench` YCSB workload A on the same cluster: closed loop over HTTP and over
#      the zero-hop client, the client with every request sent to one node, and an open
#      loop at half of the zero-hop client's maximum throughput;
#   3. a side-by-side table and the ratios against the targets of docs/benchmarks.md (with,
#      per `ringkv bench` run, the nodes' CPU per operation, the machine's idle share and the
#      appends per journal fsync), and each node's resident memory once formed and after the
#      runs.
#
# Settings (environment): BENCH_TARGET_DIR (cargo target dir of the release build, kept
# apart from target/debug so running tests keep their binary), BENCH_DURATION_SECS (each
# `ringkv bench` run, default 10), BENCH_REQUESTS (redis-benchmark -n, default 200000),
# BENCH_CONCURRENCY (`ringkv bench` workers, default 32), BENCH_NODES (cluster size, default 3;
# zero-hop routing can only save a hop when the cluster is larger than N), BENCH_NODE_WORKERS
# (tokio worker threads of each node only, not of the load generator; default: one per core),
# BENCH_READ_FANOUT (the nodes' --read-fanout: `all`, the default, or `quorum`),
# BENCH_OUT (where the JSON reports
# and logs go, default a temporary folder that is kept), BENCH_PERF=1 (profile node n1 with
# `perf record` during the closed-loop zero-hop run; the top symbols go to $OUT/perf-top.txt).
# Everything this script starts is stopped on exit (trap); it takes a few minutes.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${BENCH_TARGET_DIR:-$ROOT/target/bench}
DURATION=${BENCH_DURATION_SECS:-10}
REQUESTS=${BENCH_REQUESTS:-200000}
CONCURRENCY=${BENCH_CONCURRENCY:-32}
NODE_COUNT=${BENCH_NODES:-3}
NODE_WORKERS=${BENCH_NODE_WORKERS:-}
READ_FANOUT=${BENCH_READ_FANOUT:-all}
OUT=${BENCH_OUT:-$(mktemp -d /tmp/ringkv-compare.XXXXXX)}
WORK=$(mktemp -d /tmp/ringkv-compare-data.XXXXXX)
# How long a server may take to answer its first request.
READY_TIMEOUT_SECS=60
mkdir -p "$OUT"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '==> %s\n' "$*" >&2; }

need_tools() {
    if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
        log "installing redis-server and redis-tools"
        apt-get install -y redis-server redis-tools >/dev/null ||
            { apt-get update >/dev/null && apt-get install -y redis-server redis-tools >/dev/null; }
    fi
    for tool in redis-server redis-benchmark redis-cli jq curl python3 cargo; do
        command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
    done
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for DESCRIPTION COMMAND...: polls COMMAND until it succeeds, with a deadline.
wait_for() {
    local what=$1; shift
    local deadline=$((SECONDS + READY_TIMEOUT_SECS))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            echo "timed out waiting for $what" >&2
            exit 1
        fi
        sleep 0.2
    done
}

# cpu_ticks PID...: user + system CPU ticks (1/CLK_TCK s) the processes used so far.
cpu_ticks() {
    local total=0 pid ticks
    for pid in "$@"; do
        ticks=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
        total=$((total + ticks))
    done
    echo "$total"
}

# stolen_ticks: CPU ticks the hypervisor gave to other guests so far (/proc/stat "steal"); a
# run during which this grows by more than a few ticks measured a noisy neighbour as well.
stolen_ticks() { awk '/^cpu / { print $9 }' /proc/stat; }

# stolen_secs BEFORE: seconds stolen since BEFORE (ticks).
stolen_secs() {
    awk -v t=$(($(stolen_ticks) - $1)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}

# redis_bench NAME PORT PID...: runs the issue's redis-benchmark (SET, then GET) against PORT;
# prints "SET_RPS GET_RPS ERRORS SET_CPU_US GET_CPU_US STOLEN_S": the CPU the server processes
# PID... used per request (less noisy than throughput on a shared machine) and the seconds of
# CPU stolen by the hypervisor during the run.
redis_bench() {
    local name=$1 port=$2 out="$OUT/redis-benchmark-$1.txt"
    shift 2
    local hz test before after
    hz=$(getconf CLK_TCK)
    declare -A rps cpu
    : >"$out"
    local stolen
    stolen=$(stolen_ticks)
    log "redis-benchmark against $name (port $port)"
    for test in set get; do
        before=$(cpu_ticks "$@")
        redis-benchmark -h 127.0.0.1 -p "$port" -c 50 -r 100000 -d 100 -t "$test" \
            -n "$REQUESTS" -q >>"$out" 2>&1 || echo "redis-benchmark exited with $?" >>"$out"
        after=$(cpu_ticks "$@")
        cpu[$test]=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$REQUESTS" \
            'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
    done
    tr '\r' '\n' <"$out" | grep -E '^(SET|GET): [0-9.]+ requests per second' >"$out.summary" || true
    cat "$out.summary" >&2
    local set get errors
    set=$(awk -F'[: ]+' '/^SET:/ {print $2}' "$out.summary")
    get=$(awk -F'[: ]+' '/^GET:/ {print $2}' "$out.summary")
    errors=$(tr '\r' '\n' <"$out" | grep -ciE 'error|exited' || true)
    echo "${set:-0} ${get:-0} $errors ${cpu[set]} ${cpu[get]} $(stolen_secs "$stolen")"
}

cluster_formed() {
    local port
    for port in "${HTTP_PORTS[@]}"; do
        curl -sf "http://127.0.0.1:$port/status" |
            jq -e '[.cluster.members[] | select(.status == "up" and .partitions_owned > 0)] | length == '"$NODE_COUNT" \
                >/dev/null || return 1
    done
}

# ringkv_bench NAME ARGS...: one `ringkv bench` run of workload A, its JSON report in $OUT.
# Writes "CPU_US_PER_OP IDLE_PCT APPENDS_PER_FSYNC" to $OUT/usage-NAME.txt: the CPU the nodes
# used per operation, the share of the machine's CPU left idle, and how many appends each of
# the nodes' journal fsyncs made durable (group commit), all over the whole run (the first run
# also loads the records; later runs pass --load false).
ringkv_bench() {
    local name=$1; shift
    log "ringkv bench: $name"
    local stolen ticks idle total fsyncs
    stolen=$(stolen_ticks)
    ticks=$(cpu_ticks "${PIDS[@]}")
    idle=$(idle_ticks)
    total=$(total_ticks)
    fsyncs=$(fsync_totals)
    "$RINGKV" bench --workload a --duration-secs "$DURATION" --concurrency "$CONCURRENCY" \
        --json "$OUT/bench-$name.json" "$@" | tee "$OUT/bench-$name.txt" >&2
    stolen_secs "$stolen" >"$OUT/stolen-$name.txt"
    local ops
    ops=$(jq '[.operations[] | .count] | add' "$OUT/bench-$name.json")
    awk -v t=$(($(cpu_ticks "${PIDS[@]}") - ticks)) -v i=$(($(idle_ticks) - idle)) \
        -v all=$(($(total_ticks) - total)) -v hz="$(getconf CLK_TCK)" -v n="$ops" \
        -v f0="$fsyncs" -v f1="$(fsync_totals)" 'BEGIN {
            split(f0, a, " "); split(f1, b, " ");
            per = (b[2] > a[2]) ? (b[1] - a[1]) / (b[2] - a[2]) : 0;
            printf "%.0f %.0f %.1f\n", (n > 0 ? t / hz * 1e6 / n : 0), (all > 0 ? 100 * i / all : 0), per }' \
        >"$OUT/usage-$name.txt"
}

# idle_ticks / total_ticks: the machine's idle (idle + iowait) and total CPU ticks so far.
idle_ticks() { awk '/^cpu / { print $5 + $6 }' /proc/stat; }
total_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t }' /proc/stat; }

# fsync_totals: "APPENDS FSYNCS" summed over the nodes' /metrics (ringkv_storage_fsync_batches).
fsync_totals() {
    local port appends=0 fsyncs=0 page
    for port in "${HTTP_PORTS[@]}"; do
        page=$(curl -sf "http://127.0.0.1:$port/metrics" || true)
        appends=$(awk -v a="$appends" '$1 == "ringkv_storage_fsync_batches_sum" { a += $2 } END { printf "%.0f", a }' <<<"$page")
        fsyncs=$(awk -v f="$fsyncs" '$1 == "ringkv_storage_fsync_batches_count" { f += $2 } END { printf "%.0f", f }' <<<"$page")
    done
    echo "$appends $fsyncs"
}

field() { jq -r "$2" "$OUT/bench-$1.json"; }

need_tools
log "building ringkv (release) into $TARGET_DIR"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p ringkv --bin ringkv -q)
RINGKV=$TARGET_DIR/release/ringkv

# --- redis -------------------------------------------------------------------------------
REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --dir "$WORK" >"$OUT/redis-server.log" 2>&1 &
PIDS+=($!)
wait_for "redis-server" redis-cli -p "$REDIS_PORT" ping
read -r REDIS_SET REDIS_GET REDIS_ERRORS REDIS_SET_CPU REDIS_GET_CPU REDIS_STOLEN < <(redis_bench redis "$REDIS_PORT" "${PIDS[0]}")
kill -TERM "${PIDS[0]}"
wait "${PIDS[0]}" 2>/dev/null || true
PIDS=()

# The same redis with every write fsynced before its reply (AOF, appendfsync always): not
# what the targets are measured against, a reference for what durability costs one process.
mkdir -p "$WORK/redis-aof"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly yes \
    --appendfsync always --daemonize no --dir "$WORK/redis-aof" >"$OUT/redis-server-aof.log" 2>&1 &
PIDS+=($!)
wait_for "redis-server (appendfsync always)" redis-cli -p "$REDIS_PORT" ping
read -r AOF_SET AOF_GET AOF_ERRORS AOF_SET_CPU AOF_GET_CPU AOF_STOLEN < <(redis_bench redis-aof "$REDIS_PORT" "${PIDS[0]}")
kill -TERM "${PIDS[0]}"
wait "${PIDS[0]}" 2>/dev/null || true
PIDS=()

# --- ringkv cluster ----------------------------------------------------------------------
HTTP_PORTS=() RESP_PORTS=() LISTEN_PORTS=()
for ((i = 0; i < NODE_COUNT; i++)); do
    HTTP_PORTS+=("$(free_port)") RESP_PORTS+=("$(free_port)") LISTEN_PORTS+=("$(free_port)")
done
for ((i = 0; i < NODE_COUNT; i++)); do
    args=(server --node-id "n$((i + 1))" --listen "127.0.0.1:${LISTEN_PORTS[i]}"
        --http "127.0.0.1:${HTTP_PORTS[i]}" --resp "127.0.0.1:${RESP_PORTS[i]}"
        --data-dir "$WORK/n$((i + 1))" --storage fjall --n 3 --r 2 --w 2
        --read-fanout "$READ_FANOUT")
    if ((i > 0)); then args+=(--seed "127.0.0.1:${LISTEN_PORTS[0]}"); fi
    if [[ -n $NODE_WORKERS ]]; then
        TOKIO_WORKER_THREADS=$NODE_WORKERS RUST_LOG=warn "$RINGKV" "${args[@]}" \
            >"$OUT/node$((i + 1)).log" 2>&1 &
    else
        RUST_LOG=warn "$RINGKV" "${args[@]}" >"$OUT/node$((i + 1)).log" 2>&1 &
    fi
    PIDS+=($!)
    wait_for "node n$((i + 1))" curl -sf "http://127.0.0.1:${HTTP_PORTS[i]}/status"
done
wait_for "the cluster to form" cluster_formed
log "cluster up: HTTP ${HTTP_PORTS[*]}, RESP ${RESP_PORTS[*]}"
# rss_mib PID...: each process's resident memory in MiB. Nothing scrapes /metrics during the
# runs, so a node that kept per-request data until a scrape would show here as growth.
rss_mib() {
    local pid
    for pid in "$@"; do
        awk '/^VmRSS:/ { printf "%.0f ", $2 / 1024 }' "/proc/$pid/status" 2>/dev/null || printf '? '
    done
}
RSS_BEFORE=$(rss_mib "${PIDS[@]}")
NODES=()
for port in "${HTTP_PORTS[@]}"; do NODES+=(--node "http://127.0.0.1:$port"); done

read -r RKV_SET RKV_GET RKV_ERRORS RKV_SET_CPU RKV_GET_CPU RKV_STOLEN < <(redis_bench ringkv "${RESP_PORTS[0]}" "${PIDS[@]}")

ringkv_bench http-closed --driver http "${NODES[@]}"
PERF_PID=
if [[ ${BENCH_PERF:-0} == 1 ]] && command -v perf >/dev/null; then
    # Covers the run from its first second (the load phase is the same reads and writes).
    (sleep 1 && perf record -F 499 -g -p "${PIDS[0]}" -o "$OUT/perf.data" -- \
        sleep "$DURATION" >"$OUT/perf-record.log" 2>&1) &
    PERF_PID=$!
fi
ringkv_bench client-closed --driver client --load false "${NODES[@]}"
if [[ -n $PERF_PID ]]; then
    wait "$PERF_PID" || true
    perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
        grep -E '^ +[0-9]' | head -n 40 >"$OUT/perf-top.txt" || true
    perf report -i "$OUT/perf.data" --children --sort symbol --stdio -g none 2>/dev/null |
        grep -E '^ +[0-9]' | head -n 60 >"$OUT/perf-children.txt" || true
fi
ringkv_bench one-node-closed --driver client-one-node --load false "${NODES[@]}"
MAX=$(field client-closed .throughput_ops_per_sec)
HALF=$(awk -v m="$MAX" 'BEGIN { printf "%d", m / 2 }')
ringkv_bench client-open --driver client --load false "${NODES[@]}" --rate "$HALF"

RSS_AFTER=$(rss_mib "${PIDS[@]}")

# --- report ------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
verdict() { awk -v v="$1" -v t="$2" -v dir="$3" 'BEGIN {
    if (v == "n/a") print "n/a"; else if ((dir == "ge" && v >= t) || (dir == "le" && v <= t)) print "met"; else print "MISSED" }'; }

SET_RATIO=$(ratio "$RKV_SET" "$REDIS_SET")
GET_RATIO=$(ratio "$RKV_GET" "$REDIS_GET")
P999=$(field client-open '[.operations[] | .p999_ms] | max')
ZERO_HOP=$(ratio "$MAX" "$(field one-node-closed .throughput_ops_per_sec)")
BENCH_ERRORS=0
for name in http-closed client-closed one-node-closed client-open; do
    BENCH_ERRORS=$((BENCH_ERRORS + $(field "$name" .errors_total)))
done

{
    echo
    echo "## redis-benchmark -c 50 -r 100000 -d 100 -t set,get -n $REQUESTS"
    echo
    echo "| server | SET req/s | GET req/s | errors | server CPU per SET / GET (us) | CPU stolen (s) |"
    echo "|---|---|---|---|---|---|"
    echo "| redis-server (1 process, no persistence) | $REDIS_SET | $REDIS_GET | $REDIS_ERRORS | $REDIS_SET_CPU / $REDIS_GET_CPU | $REDIS_STOLEN |"
    echo "| redis-server, appendfsync always (reference only) | $AOF_SET | $AOF_GET | $AOF_ERRORS | $AOF_SET_CPU / $AOF_GET_CPU | $AOF_STOLEN |"
    echo "| ringkv $NODE_COUNT nodes N=3 R=W=2, read fanout $READ_FANOUT, RESP of n1 | $RKV_SET | $RKV_GET | $RKV_ERRORS | $RKV_SET_CPU / $RKV_GET_CPU (all nodes) | $RKV_STOLEN |"
    echo
    echo "## ringkv bench, workload A, read fanout $READ_FANOUT, $CONCURRENCY workers, ${DURATION}s, 10000 records of 100 bytes"
    echo
    echo "| run | ops/s | read p50 / p99 / p99.9 / max ms | update p50 / p99 / p99.9 / max ms | errors | late | CPU stolen (s) | nodes' CPU per op (us) | machine idle | appends per fsync |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    for name in http-closed client-closed one-node-closed client-open; do
        read -r USAGE_CPU USAGE_IDLE USAGE_FSYNC <"$OUT/usage-$name.txt"
        jq -r --arg name "$name" --arg stolen "$(cat "$OUT/stolen-$name.txt")" \
            --arg usage "$USAGE_CPU | $USAGE_IDLE % | $USAGE_FSYNC" '
            def lat(op): if .operations[op] then
                [.operations[op] | .p50_ms, .p99_ms, .p999_ms, .max_ms] | map(tostring) | join(" / ")
                else "-" end;
            "| \($name)\(if .rate_ops_per_sec then " @ \(.rate_ops_per_sec) ops/s" else "" end) | \(.throughput_ops_per_sec | floor) | \(lat("read")) | \(lat("update")) | \(.errors_total) | \(.scheduler.late) | \($stolen) | \($usage) |"' \
            "$OUT/bench-$name.json"
    done
    echo
    echo "## Targets"
    echo
    echo "| target | measured | verdict |"
    echo "|---|---|---|"
    echo "| ringkv SET >= 1/3 of redis | $SET_RATIO | $(verdict "$SET_RATIO" 0.3333 ge) |"
    echo "| ringkv GET >= 0.4 of redis | $GET_RATIO | $(verdict "$GET_RATIO" 0.4 ge) |"
    echo "| redis-benchmark errors against ringkv = 0 | $RKV_ERRORS | $(verdict "$RKV_ERRORS" 0 le) |"
    echo "| workload A P99.9 <= 10 ms at half max throughput (open loop, $HALF ops/s) | $P999 ms | $(verdict "$P999" 10 le) |"
    echo "| zero-hop >= 1.3x one node (closed loop) | ${ZERO_HOP}x | $(verdict "$ZERO_HOP" 1.3 ge) |"
    echo "| ringkv bench errors = 0 | $BENCH_ERRORS | $(verdict "$BENCH_ERRORS" 0 le) |"
    echo
    echo "For reference (no target): ringkv SET is $(ratio "$RKV_SET" "$AOF_SET")x and GET" \
        "$(ratio "$RKV_GET" "$AOF_GET")x of redis with appendfsync always."
    echo
    echo "Node memory (RSS, MiB, n1..n$NODE_COUNT): ${RSS_BEFORE% } once formed, ${RSS_AFTER% } after the runs."
    echo
    echo "Reports and logs: $OUT"
} | tee "$OUT/summary.md"
