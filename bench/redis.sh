#!/usr/bin/env bash
# Benchmark of shared sessions (issue 5), in one run: every request carries a valid session
# cookie, through
#   memory  the gateway with the embedded memory store,
#   near    the gateway on Redis with its near cache (ttl 2s),
#   direct  the gateway on Redis without a near cache (every request asks Redis),
# and nginx passing the same requests through. wrk is pinned to CPU 0; the gateways, nginx,
# the backend and the benchmark's own redis-server to CPU 1 (REDIS_CPU moves Redis). Rounds alternate the four so
# machine noise hits all. Redis round trips and commands per request come from INFO commandstats.
# Targets: near >= 0.95 x memory requests/s with no Redis round trip on a hit; direct >=
# 0.6 x nginx.
#
#   bench/redis.sh                        # 3 rounds of 10 s at 50 connections
#   ROUNDS=5 DURATION=15s CONNS=100 bench/redis.sh
#   REDIS_CPU=0 bench/redis.sh            # Redis beside wrk rather than on the proxy's CPU
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
BACKEND_PORT=${BACKEND_PORT:-19021}
NGINX_PORT=${NGINX_PORT:-19022}
MEMORY_PORT=${MEMORY_PORT:-19023}
NEAR_PORT=${NEAR_PORT:-19024}
DIRECT_PORT=${DIRECT_PORT:-19025}
REDIS_PORT=${REDIS_PORT:-19026}
# The CPU Redis runs on: 1, the proxy's own (one machine for everything), or 0, beside wrk
# (Redis on another machine, as in production: its time leaves the proxy's budget).
REDIS_CPU=${REDIS_CPU:-1}

. bench/lib.sh
bench_tools
command -v redis-server >/dev/null || { echo "bench needs redis-server (scripts/test installs it)" >&2; exit 1; }

cargo build --release --quiet --bin sessiongate --example bench_backend
target=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

taskset -c "$REDIS_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
redis_pid=$!; pids+=("$redis_pid")
taskset -c 1 "$target/examples/bench_backend" "127.0.0.1:$BACKEND_PORT" 2>/dev/null &
pids+=($!)
sed -e "s#@DIR@#$work#g" -e "s#@BACKEND_PORT@#$BACKEND_PORT#g" -e "s#@NGINX_PORT@#$NGINX_PORT#g" \
    bench/nginx.conf >"$work/nginx.conf"
taskset -c 1 nginx -p "$work" -c "$work/nginx.conf" -e "$work/nginx-error.log" &
nginx_pid=$!; pids+=("$nginx_pid")

# gateway NAME PORT STORE: bench/gateway-sessions.yaml with another store.
declare -A gw_pid
gateway() {
    sed -e "s#^sessions: {}#sessions: { store: $3 }#" bench/gateway-sessions.yaml >"$work/$1.yaml"
    GW_PORT=$2 BACKEND_PORT=$BACKEND_PORT RUST_LOG=warn \
        taskset -c 1 "$target/sessiongate" run --config "$work/$1.yaml" >/dev/null &
    gw_pid[$1]=$!; pids+=($!)
}
redis_store() { echo "{ kind: redis, redis: { url: \"redis://127.0.0.1:$REDIS_PORT\", key_prefix: \"bench-$1:\", near_cache: { ttl: $2 } } }"; }
gateway memory "$MEMORY_PORT" "{ kind: memory }"
gateway near "$NEAR_PORT" "$(redis_store near 2s)"
gateway direct "$DIRECT_PORT" "$(redis_store direct 0s)"
for p in "$REDIS_PORT" "$BACKEND_PORT" "$NGINX_PORT" "$MEMORY_PORT" "$NEAR_PORT" "$DIRECT_PORT"; do wait_port "$p"; done

# One login per gateway: every request of a run carries that session's cookie.
declare -A cookie
for g in memory near direct; do
    port_var=${g^^}_PORT
    c=$(curl -s -D - -o /dev/null "http://127.0.0.1:${!port_var}/login" | awk -F'[ ;]' 'tolower($1) == "set-cookie:" {print $2}')
    [ -n "$c" ] || { echo "no session cookie from the $g gateway" >&2; exit 1; }
    cookie[$g]=$c
done

# Redis commands that open a round trip, so far: a read is one HMGET (concurrent ones share a
# pipeline: see redis_reads), a change or a touch one EVALSHA. The commands a script runs inside count in commandstats too, so only the
# commands that open a round trip are counted here; redis_commands counts them all.
redis_trips() {
    redis-cli -p "$REDIS_PORT" info commandstats |
        awk -F'[=,:]' '$1 ~ /^cmdstat_(hmget|evalsha|eval|script|ping|subscribe)$/ {n += $3} END {print n + 0}'
}
# Every command Redis ran, those inside scripts included (INFO itself not counted).
redis_commands() {
    redis-cli -p "$REDIS_PORT" info commandstats |
        awk -F'[=,:]' '/^cmdstat_/ && $1 != "cmdstat_info" {n += $3} END {print n + 0}'
}

# Reads Redis made from its clients' sockets: with the commands, how well reads are batched.
redis_reads() {
    redis-cli -p "$REDIS_PORT" info stats | awk -F: '/^total_reads_processed/ {print $2 + 0}'
}

# measure NAME PORT PID DURATION -> "rps p50 p99 cpu requests redis_round_trips_per_request
#   redis_commands_per_request redis_cpu_us_per_request redis_socket_reads_per_request" (Redis shares the proxy's CPU, so its
#   time is reported apart: the gateway's cpu column is its own process only)
measure() {
    local trips cmds ticks reads out
    trips=$(redis_trips); cmds=$(redis_commands); ticks=$(cpu_ticks "$redis_pid"); reads=$(redis_reads)
    out=$(wrk_run "$1" "$2" "$3" "$CONNS" "$4" -H "Cookie: ${cookie[$1]:-${cookie[memory]}}")
    trips=$(($(redis_trips) - trips)); cmds=$(($(redis_commands) - cmds))
    ticks=$(($(cpu_ticks "$redis_pid") - ticks)); reads=$(($(redis_reads) - reads))
    awk -v o="$out" -v t="$trips" -v c="$cmds" -v k="$ticks" -v r="$reads" -v hz="$(getconf CLK_TCK)" 'BEGIN {
        split(o, f, " "); n = f[5] > 0 ? f[5] : 1
        printf "%s %.5f %.4f %.2f %.4f\n", o, t / n, c / n, k * 1000000 / hz / n, r / n }'
}

echo "warming up..."
measure nginx "$NGINX_PORT" "$nginx_pid" 2s >/dev/null
for g in memory near direct; do
    port_var=${g^^}_PORT
    measure "$g" "${!port_var}" "${gw_pid[$g]}" 2s >/dev/null
done

for r in $(seq "$ROUNDS"); do
    line="round $r [rps p50us p99us cpu_us/req requests redis_trips/req redis_cmds/req redis_cpu_us/req redis_reads/req]:"
    m=$(measure nginx "$NGINX_PORT" "$nginx_pid" "$DURATION"); echo "$m" >>"$work/nginx.txt"; line+=" nginx $m |"
    for g in memory near direct; do
        port_var=${g^^}_PORT
        m=$(measure "$g" "${!port_var}" "${gw_pid[$g]}" "$DURATION"); echo "$m" >>"$work/$g.txt"
        line+=" $g $m |"
    done
    echo "$line"
done

col() { awk -v c="$1" '{print $c}' "$work/$2.txt" | median; }
echo
echo "every request with a valid session cookie (5 attributes to the backend), $CONNS connections, median of $ROUNDS rounds of $DURATION, Redis on CPU $REDIS_CPU:"
printf '%-8s %12s %10s %10s %12s %16s %15s %16s %16s\n' "" "requests/s" "p50 us" "p99 us" "cpu us/req" "redis trips/req" "redis cmds/req" "redis cpu us/req" "redis reads/req"
for g in nginx memory near direct; do
    printf '%-8s %12s %10s %10s %12s %16s %15s %16s %16s\n' "$g" "$(col 1 "$g")" "$(col 2 "$g")" "$(col 3 "$g")" "$(col 4 "$g")" "$(col 6 "$g")" "$(col 7 "$g")" "$(col 8 "$g")" "$(col 9 "$g")"
done
echo
awk -v n="$(col 1 nginx)" -v m="$(col 1 memory)" -v ne="$(col 1 near)" -v d="$(col 1 direct)" -v nc="$(col 6 near)" 'BEGIN {
    printf "near / memory: %.2fx requests/s (target >= 0.95), %.5f Redis round trips per request (hits: none; one per second notes the use)\n", ne / m, nc
    printf "direct / nginx: %.2fx requests/s (target >= 0.6); direct / memory: %.2fx\n", d / n, d / m
}'
# The same ratios taken round by round (each pair ran back to back, so slow drifts of the
# machine cancel): their median and range.
paired() { # paired A B -> "median (min-max)" of A/B over the rounds
    paste -d' ' "$work/$1.txt" "$work/$2.txt" | awk -v w="$(awk 'END {print NF}' "$work/$1.txt")" '{print $1 / $(w + 1)}' |
        sort -g | awk '{a[NR] = $1} END {printf "%.2fx (%.2f-%.2f)", a[int((NR + 1) / 2)], a[1], a[NR]}'
}
echo "round by round: near / memory $(paired near memory), direct / nginx $(paired direct nginx), direct / memory $(paired direct memory)"
