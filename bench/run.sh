#!/usr/bin/env bash
# Benchmark: the gateway against nginx, in one run, on this machine.
#
# wrk is pinned to CPU 0; each proxy and the backend are pinned to CPU 1, so one core is the
# proxy's budget, as one nginx worker's is. Rounds alternate nginx / gateway so that machine
# noise hits both. Only the ratios printed at the end mean anything on a noisy machine.
#
#   bench/run.sh                 # defaults: 3 rounds of 10 s at 50 connections
#   ROUNDS=5 DURATION=15s CONNS=100 bench/run.sh
#   SESSIONS=1 bench/run.sh      # every request with a valid session cookie, memory store
#                                # (bench/gateway-sessions.yaml), against nginx proxying plainly
#   SESSIONS=sealed bench/run.sh # the same with the whole session sealed in the cookie
#                                # (bench/gateway-sealed.yaml)
#   SESSIONS=1 PEER=lua bench/run.sh  # against a session-aware nginx (bench/nginx-sessions.conf:
#                                # nginx + Lua checking its own cookie's HMAC, a shared-dict
#                                # lookup, five attributes as headers, client copies stripped)
#   LOGS=1 bench/run.sh          # access logs on both sides: `combined` to a file (nginx with
#                                # buffer=64k), as operators run them; combines with the above
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
BACKEND_PORT=${BACKEND_PORT:-19001}
NGINX_PORT=${NGINX_PORT:-19002}
GW_PORT=${GW_PORT:-19003}
FLOOR_PORT=${FLOOR_PORT:-19004}
SESSIONS=${SESSIONS:-0}
LOGS=${LOGS:-0}
PEER=${PEER:-plain}
GW_CONFIG=bench/gateway.yaml
NGINX_CONFIG=bench/nginx.conf
case "$SESSIONS" in
    0) ;;
    1) GW_CONFIG=bench/gateway-sessions.yaml ;;
    sealed) GW_CONFIG=bench/gateway-sealed.yaml ;;
    *) echo "SESSIONS is 0, 1 or sealed" >&2; exit 1 ;;
esac
case "$PEER" in
    plain) ;;
    lua)
        [ "$SESSIONS" != 0 ] || { echo "PEER=lua compares sessions: set SESSIONS=1" >&2; exit 1; }
        NGINX_CONFIG=bench/nginx-sessions.conf ;;
    *) echo "PEER is plain or lua" >&2; exit 1 ;;
esac

. bench/lib.sh
bench_tools
[ "$PEER" = lua ] && bench_lua

cargo build --release --quiet --bin sessiongate --example bench_backend --example bare_proxy
target=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

taskset -c 1 "$target/examples/bench_backend" "127.0.0.1:$BACKEND_PORT" 2>/dev/null &
backend_pid=$!; pids+=("$backend_pid")
access_log="access_log off;"
gw_log=warn
if [ "$LOGS" = 1 ]; then
    access_log="access_log $work/nginx-access.log combined buffer=64k;"
    # The gateway's access lines as nginx's: combined, to a file.
    { cat "$GW_CONFIG"; echo "logs: { access: { file: $work/gateway-access.log, format: combined } }"; } \
        >"$work/gateway.yaml"
    GW_CONFIG="$work/gateway.yaml"
    gw_log=warn,access=info
fi
sed -e "s#@DIR@#$work#g" -e "s#@BACKEND_PORT@#$BACKEND_PORT#g" -e "s#@NGINX_PORT@#$NGINX_PORT#g" \
    -e "s#@ACCESS_LOG@#$access_log#g" "$NGINX_CONFIG" >"$work/nginx.conf"
taskset -c 1 nginx -p "$work" -c "$work/nginx.conf" -e "$work/nginx-error.log" &
nginx_pid=$!; pids+=("$nginx_pid")
GW_PORT=$GW_PORT BACKEND_PORT=$BACKEND_PORT RUST_LOG=$gw_log \
    taskset -c 1 "$target/sessiongate" run --config "$GW_CONFIG" >/dev/null &
gw_pid=$!; pids+=("$gw_pid")
# The floor of the stack: hyper server + hyper client with nothing in between (a reference
# row only: it shows how much of the gap to nginx is the gateway's own work).
taskset -c 1 "$target/examples/bare_proxy" "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$BACKEND_PORT" &
floor_pid=$!; pids+=("$floor_pid")
wait_port "$BACKEND_PORT"; wait_port "$NGINX_PORT"; wait_port "$GW_PORT"; wait_port "$FLOOR_PORT"

# With sessions every request carries the session cookie of one login: the gateway's own to
# every target (nginx proxying plainly and the floor pass it through), except that the Lua
# peer gets one of its own sessions.
login_cookie() {
    local c
    c=$(curl -s -D - -o /dev/null "http://127.0.0.1:$1/login" | awk -F'[ ;]' 'tolower($1) == "set-cookie:" {print $2}')
    [ -n "$c" ] || { echo "no session cookie from the proxy on port $1" >&2; exit 1; }
    echo "$c"
}
GW_HEADER=(); NGINX_HEADER=()
if [ "$SESSIONS" != 0 ]; then
    GW_HEADER=(-H "Cookie: $(login_cookie "$GW_PORT")")
    NGINX_HEADER=("${GW_HEADER[@]}")
    [ "$PEER" = lua ] && NGINX_HEADER=(-H "Cookie: $(login_cookie "$NGINX_PORT")")
fi

# run NAME PORT PID CONNS DURATION -> "rps p50_us p99_us cpu_us_per_req requests"
run() {
    case "$1" in
        nginx) wrk_run "$@" "${NGINX_HEADER[@]}" ;;
        *) wrk_run "$@" "${GW_HEADER[@]}" ;;
    esac
}

echo "warming up..."
run nginx "$NGINX_PORT" "$nginx_pid" "$CONNS" 2s >/dev/null
run gateway "$GW_PORT" "$gw_pid" "$CONNS" 2s >/dev/null
run floor "$FLOOR_PORT" "$floor_pid" "$CONNS" 2s >/dev/null

: >"$work/nginx.txt"; : >"$work/gateway.txt"; : >"$work/floor.txt"
for r in $(seq "$ROUNDS"); do
    n=$(run nginx "$NGINX_PORT" "$nginx_pid" "$CONNS" "$DURATION"); echo "$n" >>"$work/nginx.txt"
    g=$(run gateway "$GW_PORT" "$gw_pid" "$CONNS" "$DURATION"); echo "$g" >>"$work/gateway.txt"
    f=$(run floor "$FLOOR_PORT" "$floor_pid" "$CONNS" "$DURATION"); echo "$f" >>"$work/floor.txt"
    echo "round $r: nginx [rps p50us p99us cpu_us/req] $n | gateway $g | floor $f | gateway/nginx $(
        awk -v g="$g" -v n="$n" 'BEGIN { split(g, a, " "); split(n, b, " "); printf "%.2fx req/s, %.2fx CPU", a[1] / b[1], a[4] / b[4] }')"
done

# Added latency at one connection: each proxy's p50 minus the backend's own, over as many
# short rounds (a single one moves by several microseconds from run to run).
for r in $(seq "$ROUNDS"); do
    run backend "$BACKEND_PORT" - 1 2s >>"$work/direct1.txt"
    run nginx "$NGINX_PORT" "$nginx_pid" 1 2s >>"$work/nginx1.txt"
    run gateway "$GW_PORT" "$gw_pid" 1 2s >>"$work/gateway1.txt"
    run floor "$FLOOR_PORT" "$floor_pid" 1 2s >>"$work/floor1.txt"
done

col() { awk -v c="$1" '{print $c}' "$2" | median; }
n_rps=$(col 1 "$work/nginx.txt"); g_rps=$(col 1 "$work/gateway.txt")
n_p50=$(col 2 "$work/nginx.txt"); g_p50=$(col 2 "$work/gateway.txt")
n_p99=$(col 3 "$work/nginx.txt"); g_p99=$(col 3 "$work/gateway.txt")
n_cpu=$(col 4 "$work/nginx.txt"); g_cpu=$(col 4 "$work/gateway.txt")
f_rps=$(col 1 "$work/floor.txt"); f_p50=$(col 2 "$work/floor.txt"); f_p99=$(col 3 "$work/floor.txt")
f_cpu=$(col 4 "$work/floor.txt"); f1_p50=$(col 2 "$work/floor1.txt")
d_p50=$(col 2 "$work/direct1.txt"); n1_p50=$(col 2 "$work/nginx1.txt"); g1_p50=$(col 2 "$work/gateway1.txt")
n_rss=$(peak_rss_kib "$nginx_pid"); g_rss=$(peak_rss_kib "$gw_pid")

# Issue 16's targets, per mode (the Lua peer is a session-aware nginx, so the bar is higher).
rps_target=0.95; cpu_target=1.10; what="plain proxy"
case "$SESSIONS/$PEER" in
    1/plain) rps_target=0.9; cpu_target=-; what="sessions (memory store, 5 attributes to the backend) against nginx proxying plainly" ;;
    sealed/plain) rps_target=0.85; cpu_target=-; what="sessions sealed in the cookie against nginx proxying plainly" ;;
    1/lua) rps_target=1.6; cpu_target=-; what="sessions (memory store) against a session-aware nginx (Lua)" ;;
esac
[ "$LOGS" = 1 ] && { rps_target=0.9; cpu_target=-; what="$what; access logs on both sides: combined, to a file ($(wc -l <"$work/gateway-access.log") gateway lines, $(wc -l <"$work/nginx-access.log") nginx lines written)"; }
echo
echo "$what"
printf '%-10s %12s %10s %10s %14s %14s %12s\n' "" "requests/s" "p50 us" "p99 us" "cpu us/req" "added p50@1" "peak RSS KiB"
printf '%-10s %12s %10s %10s %14s %14s %12s\n' nginx "$n_rps" "$n_p50" "$n_p99" "$n_cpu" \
    "$(awk -v a="$n1_p50" -v b="$d_p50" 'BEGIN{printf "%.1f", a-b}')" "$n_rss"
printf '%-10s %12s %10s %10s %14s %14s %12s\n' gateway "$g_rps" "$g_p50" "$g_p99" "$g_cpu" \
    "$(awk -v a="$g1_p50" -v b="$d_p50" 'BEGIN{printf "%.1f", a-b}')" "$g_rss"
printf '%-10s %12s %10s %10s %14s %14s %12s\n' "hyper floor" "$f_rps" "$f_p50" "$f_p99" "$f_cpu" \
    "$(awk -v a="$f1_p50" -v b="$d_p50" 'BEGIN{printf "%.1f", a-b}')" "$(peak_rss_kib "$floor_pid")"
echo
# The median of the rounds' own ratios (each from one round's pair), beside the ratio of medians.
ratio_median() { paste -d' ' "$work/gateway.txt" "$work/nginx.txt" | awk -v c="$1" '{n = NF / 2; printf "%.3f\n", $c / $(c + n)}' | median; }
awk -v gr="$g_rps" -v nr="$n_rps" -v gc="$g_cpu" -v nc="$n_cpu" -v g1="$g1_p50" -v n1="$n1_p50" -v d="$d_p50" \
    -v rt="$rps_target" -v ct="$cpu_target" -v mr="$(ratio_median 1)" -v mc="$(ratio_median 4)" 'BEGIN {
    printf "gateway / nginx: requests/s %.2fx (median of rounds %.2fx; target >= %s), CPU per request %.2fx (median of rounds %.2fx%s)\n", gr / nr, mr, rt, gc / nc, mc, (ct == "-" ? "" : "; target <= " ct)
    printf "added p50 at 1 connection: gateway %.1f us, nginx %.1f us (target: gateway <= nginx + 5)\n", g1 - d, n1 - d
}'
