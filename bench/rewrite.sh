#!/usr/bin/env bash
# Benchmark of URL rewriting: a ~50 KB page with 500 same-origin links, in one run,
#   (a) rewritten by the gateway for a URL-tracked client (bench/gateway-rewrite.yaml),
#   (b) rewritten by the same rewriter alone, in one thread, with nothing around it
#       (examples/rewrite_alone.rs: the engine's own limit),
#   (c) proxied unchanged by nginx (bench/nginx.conf).
# wrk is pinned to CPU 0; the gateway, nginx, the backend and the lone rewriter to CPU 1.
# Prints pages/s and MB/s of page for each; the target is (a) >= 0.8 x (b).
#
#   bench/rewrite.sh                       # 3 rounds of 10 s at 10 connections
#   ROUNDS=5 DURATION=15s CONNS=20 bench/rewrite.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-10}
BACKEND_PORT=${BACKEND_PORT:-19011}
NGINX_PORT=${NGINX_PORT:-19012}
GW_PORT=${GW_PORT:-19013}

command -v wrk >/dev/null && command -v nginx >/dev/null || {
    echo "bench needs wrk and nginx-light (bench/run.sh installs them as root)" >&2; exit 1; }

cargo build --release --quiet --bin sessiongate --example bench_backend --example rewrite_alone
target=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
. bench/lib.sh

taskset -c 1 "$target/examples/bench_backend" "127.0.0.1:$BACKEND_PORT" 2>/dev/null &
pids+=($!)
sed -e "s#@DIR@#$work#g" -e "s#@BACKEND_PORT@#$BACKEND_PORT#g" -e "s#@NGINX_PORT@#$NGINX_PORT#g" \
    bench/nginx.conf >"$work/nginx.conf"
taskset -c 1 nginx -p "$work" -c "$work/nginx.conf" -e "$work/nginx-error.log" &
pids+=($!)
GW_PORT=$GW_PORT BACKEND_PORT=$BACKEND_PORT RUST_LOG=error \
    taskset -c 1 "$target/sessiongate" run --config bench/gateway-rewrite.yaml >/dev/null 2>&1 &
pids+=($!)
wait_port "$BACKEND_PORT"; wait_port "$NGINX_PORT"; wait_port "$GW_PORT"

# A URL-tracked session: the login's redirect carries the token.
location=$(curl -s -D - -o /dev/null "http://127.0.0.1:$GW_PORT/login" | awk 'tolower($1) == "location:" {print $2}' | tr -d '\r')
case "$location" in */page\;sgsid=*) ;; *) echo "no URL token from the gateway: $location" >&2; exit 1 ;; esac
tagged=$(curl -s "http://127.0.0.1:$GW_PORT$location" | grep -o ';sgsid=' | wc -l)
page_bytes=$(curl -s "http://127.0.0.1:$NGINX_PORT/page" | wc -c)
echo "page: $page_bytes bytes; links tagged by the gateway: $tagged"

# run PORT PATH -> "pages/s"
run() {
    taskset -c 0 wrk -t1 -c"$CONNS" -d"$1" "http://127.0.0.1:$2$3" | awk '/Requests\/sec/ {print $2}'
}
secs=${DURATION%s}

run 2s "$GW_PORT" "$location" >/dev/null; run 2s "$NGINX_PORT" /page >/dev/null
: >"$work/gw"; : >"$work/alone"; : >"$work/nginx"
for r in $(seq "$ROUNDS"); do
    g=$(run "$DURATION" "$GW_PORT" "$location"); echo "$g" >>"$work/gw"
    a=$(taskset -c 1 "$target/examples/rewrite_alone" "$secs" | awk '{print $1}'); echo "$a" >>"$work/alone"
    n=$(run "$DURATION" "$NGINX_PORT" /page); echo "$n" >>"$work/nginx"
    echo "round $r: pages/s gateway (rewriting) $g | rewriter alone $a | nginx (unchanged) $n"
done
g=$(median <"$work/gw"); a=$(median <"$work/alone"); n=$(median <"$work/nginx")
echo
awk -v g="$g" -v a="$a" -v n="$n" -v b="$page_bytes" 'BEGIN {
    printf "%-28s %10s %10s\n", "", "pages/s", "MB/s"
    printf "%-28s %10.1f %10.1f\n", "gateway, rewriting", g, g * b / 1e6
    printf "%-28s %10.1f %10.1f\n", "rewriter alone (1 thread)", a, a * b / 1e6
    printf "%-28s %10.1f %10.1f\n", "nginx, unchanged", n, n * b / 1e6
    printf "\ngateway / rewriter alone: %.2fx (target >= 0.8)\n", g / a
}'
