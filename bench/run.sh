#!/usr/bin/env bash
# Benchmark: the gateway against nginx, in one run, on this machine.
#
# wrk is pinned to CPU 0; each proxy and the backend are pinned to CPU 1, so one core is the
# proxy's budget, as one nginx worker's is. Rounds alternate nginx / gateway so that machine
# noise hits both. Only the ratios printed at the end mean anything on a noisy machine.
#
#   bench/run.sh                 # defaults: 3 rounds of 10 s at 50 connections
#   ROUNDS=5 DURATION=15s CONNS=100 bench/run.sh
#   SESSIONS=1 bench/run.sh      # every request with a valid session cookie (bench/gateway-sessions.yaml)
#   LOGS=1 bench/run.sh          # access logs on both sides: `combined` to a file (nginx with
#                                # buffer=64k), as operators run them
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
GW_CONFIG=bench/gateway.yaml
[ "$SESSIONS" = 1 ] && GW_CONFIG=bench/gateway-sessions.yaml

. bench/lib.sh
bench_tools

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
    -e "s#@ACCESS_LOG@#$access_log#g" bench/nginx.conf >"$work/nginx.conf"
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

# With SESSIONS=1 every request carries the session cookie of one login (the same header goes
# to nginx and the floor, which pass it through).
WRK_HEADER=()
if [ "$SESSIONS" = 1 ]; then
    cookie=$(curl -s -D - -o /dev/null "http://127.0.0.1:$GW_PORT/login" | awk -F'[ ;]' 'tolower($1) == "set-cookie:" {print $2}')
    [ -n "$cookie" ] || { echo "no session cookie from the gateway" >&2; exit 1; }
    WRK_HEADER=(-H "Cookie: $cookie")
fi

# run NAME PORT PID CONNS DURATION -> "rps p50_us p99_us cpu_us_per_req requests"
run() { wrk_run "$@" "${WRK_HEADER[@]}"; }

echo "warming up..."
run nginx "$NGINX_PORT" "$nginx_pid" "$CONNS" 2s >/dev/null
run gateway "$GW_PORT" "$gw_pid" "$CONNS" 2s >/dev/null
run floor "$FLOOR_PORT" "$floor_pid" "$CONNS" 2s >/dev/null

: >"$work/nginx.txt"; : >"$work/gateway.txt"; : >"$work/floor.txt"
for r in $(seq "$ROUNDS"); do
    n=$(run nginx "$NGINX_PORT" "$nginx_pid" "$CONNS" "$DURATION"); echo "$n" >>"$work/nginx.txt"
    g=$(run gateway "$GW_PORT" "$gw_pid" "$CONNS" "$DURATION"); echo "$g" >>"$work/gateway.txt"
    f=$(run floor "$FLOOR_PORT" "$floor_pid" "$CONNS" "$DURATION"); echo "$f" >>"$work/floor.txt"
    echo "round $r: nginx [rps p50us p99us cpu_us/req] $n | gateway $g | floor $f"
done

# Added latency at one connection: each proxy's p50 minus the backend's own.
direct1=$(run backend "$BACKEND_PORT" - 1 5s)
nginx1=$(run nginx "$NGINX_PORT" "$nginx_pid" 1 5s)
gw1=$(run gateway "$GW_PORT" "$gw_pid" 1 5s)
floor1=$(run floor "$FLOOR_PORT" "$floor_pid" 1 5s)

col() { awk -v c="$1" '{print $c}' "$2" | median; }
n_rps=$(col 1 "$work/nginx.txt"); g_rps=$(col 1 "$work/gateway.txt")
n_p50=$(col 2 "$work/nginx.txt"); g_p50=$(col 2 "$work/gateway.txt")
n_p99=$(col 3 "$work/nginx.txt"); g_p99=$(col 3 "$work/gateway.txt")
n_cpu=$(col 4 "$work/nginx.txt"); g_cpu=$(col 4 "$work/gateway.txt")
f_rps=$(col 1 "$work/floor.txt"); f_p50=$(col 2 "$work/floor.txt"); f_p99=$(col 3 "$work/floor.txt")
f_cpu=$(col 4 "$work/floor.txt"); f1_p50=$(awk '{print $2}' <<<"$floor1")
d_p50=$(awk '{print $2}' <<<"$direct1"); n1_p50=$(awk '{print $2}' <<<"$nginx1"); g1_p50=$(awk '{print $2}' <<<"$gw1")
n_rss=$(peak_rss_kib "$nginx_pid"); g_rss=$(peak_rss_kib "$gw_pid")

echo
[ "$SESSIONS" = 1 ] && echo "sessions: every request with a valid session cookie (5 attributes to the backend); issue 3's targets: >= 1.0x requests/s, CPU per request <= 1.1x"
[ "$LOGS" = 1 ] && echo "access logs on both sides: combined, to a file ($(wc -l <"$work/gateway-access.log") gateway lines, $(wc -l <"$work/nginx-access.log") nginx lines written); issue 16's target: >= 0.9x nginx requests/s"
echo "100-byte responses, keep-alive, $CONNS connections, median of $ROUNDS rounds of $DURATION:"
printf '%-10s %12s %10s %10s %14s %14s %12s\n' "" "requests/s" "p50 us" "p99 us" "cpu us/req" "added p50@1" "peak RSS KiB"
printf '%-10s %12s %10s %10s %14s %14s %12s\n' nginx "$n_rps" "$n_p50" "$n_p99" "$n_cpu" \
    "$(awk -v a="$n1_p50" -v b="$d_p50" 'BEGIN{printf "%.1f", a-b}')" "$n_rss"
printf '%-10s %12s %10s %10s %14s %14s %12s\n' gateway "$g_rps" "$g_p50" "$g_p99" "$g_cpu" \
    "$(awk -v a="$g1_p50" -v b="$d_p50" 'BEGIN{printf "%.1f", a-b}')" "$g_rss"
printf '%-10s %12s %10s %10s %14s %14s %12s\n' "hyper floor" "$f_rps" "$f_p50" "$f_p99" "$f_cpu" \
    "$(awk -v a="$f1_p50" -v b="$d_p50" 'BEGIN{printf "%.1f", a-b}')" "$(peak_rss_kib "$floor_pid")"
echo
cpu_target=1.0
[ "$SESSIONS" = 1 ] && cpu_target=1.1
awk -v gr="$g_rps" -v nr="$n_rps" -v gc="$g_cpu" -v nc="$n_cpu" -v g1="$g1_p50" -v n1="$n1_p50" -v d="$d_p50" -v ct="$cpu_target" 'BEGIN {
    printf "gateway / nginx: requests/s %.2fx (target >= 1.0), CPU per request %.2fx (target <= %s)\n", gr / nr, gc / nc, ct
    printf "added p50 at 1 connection: gateway %.1f us, nginx %.1f us (target: gateway <= nginx)\n", g1 - d, n1 - d
}'
