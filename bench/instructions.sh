#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: unlike requests per second, the
# count repeats exactly for the same binary and inputs, whatever else the machine does.
#
# The gateway (release build) runs under `valgrind --tool=callgrind`, counting only once it
# is serving (startup is not counted); wrk drives it for DURATION at CONNS connections, and
# the count is divided by the requests wrk completed. Each mode runs with access logs off
# (`RUST_LOG=warn`) and on (`RUST_LOG=info`, one line per request to a file), as operators run
# it.
#
#   bench/instructions.sh                    # plain proxy, and a session on every request
#   MODES="plain sessions sealed floor" bench/instructions.sh
#                                            # sealed: the session sealed in the cookie
#                                            # (bench/gateway-sealed.yaml); floor: the bare
#                                            # hyper proxy (examples/bare_proxy.rs), logs off
#   MODES=sessions LOGS=on DURATION=5s bench/instructions.sh
#   MODES=login bench/instructions.sh        # login: every request a login (a new session
#                                            # with its subject indexed), no cookie
set -euo pipefail
cd "$(dirname "$0")/.."

MODES=${MODES:-plain sessions}
LOGS=${LOGS:-off on}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
BACKEND_PORT=${BACKEND_PORT:-19011}
GW_PORT=${GW_PORT:-19013}

. bench/lib.sh
bench_tools
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null || {
    echo "bench/instructions.sh needs valgrind (apt-get install valgrind)" >&2
    exit 1
}

cargo build --release --quiet --bin sessiongate --example bench_backend --example bare_proxy
target=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
pids=()
# KEEP=1 keeps the callgrind files (for callgrind_annotate) and says where.
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "callgrind files kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

taskset -c 1 "$target/examples/bench_backend" "127.0.0.1:$BACKEND_PORT" 2>/dev/null &
pids+=("$!")
wait_port "$BACKEND_PORT"

for mode in $MODES; do
  for logs in $LOGS; do
    config=bench/gateway.yaml
    [ "$mode" = sessions ] && config=bench/gateway-sessions.yaml
    [ "$mode" = login ] && config=bench/gateway-sessions.yaml
    path=/
    [ "$mode" = login ] && path=/login
    [ "$mode" = sealed ] && config=bench/gateway-sealed.yaml
    level=warn
    [ "$logs" = on ] && level=info
    # The floor writes no access lines: it has one row, with logs off.
    [ "$mode" = floor ] && [ "$logs" = on ] && continue
    out="$work/callgrind.$mode.$logs"
    # valgrind's own report and the gateway's log lines share stderr: both go to a file.
    if [ "$mode" = floor ]; then
        taskset -c 1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
            "$target/examples/bare_proxy" "127.0.0.1:$GW_PORT" "127.0.0.1:$BACKEND_PORT" \
            >/dev/null 2>"$work/stderr.$mode.$logs" &
    else
        GW_PORT=$GW_PORT BACKEND_PORT=$BACKEND_PORT RUST_LOG=$level taskset -c 1 \
            valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
            "$target/sessiongate" run --config "$config" >/dev/null 2>"$work/stderr.$mode.$logs" &
    fi
    gw=$!
    pids+=("$gw")
    wait_port "$GW_PORT"
    header=()
    if [ "$mode" = sessions ] || [ "$mode" = sealed ]; then
        cookie=$(curl -s -D - -o /dev/null "http://127.0.0.1:$GW_PORT/login" | awk -F'[ ;]' 'tolower($1) == "set-cookie:" {print $2}')
        [ -n "$cookie" ] || { echo "no session cookie from the gateway" >&2; exit 1; }
        header=(-H "Cookie: $cookie")
    fi
    # Warm up (connections, pools, caches), then count.
    taskset -c 0 wrk -t1 -c"$CONNS" -d2s "${header[@]}" "http://127.0.0.1:$GW_PORT$path" >/dev/null
    callgrind_control -i on "$gw" >/dev/null 2>&1
    requests=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"$DURATION" "${header[@]}" "http://127.0.0.1:$GW_PORT$path" |
        awk '/requests in/ {print $1}')
    callgrind_control -i off "$gw" >/dev/null 2>&1
    kill -TERM "$gw"
    wait "$gw" 2>/dev/null || true
    # `totals:` is the count over the whole run (`summary:` is that of the last dump).
    total=$(awk '/^totals:/ {t += $2} END {print t + 0}' "$out"*)
    lines=$(grep -c "status" "$work/stderr.$mode.$logs" || true)
    awk -v m="$mode" -v l="$logs" -v t="$total" -v n="$requests" -v a="$lines" \
        'BEGIN { printf "%-9s logs %-3s %7d requests, %.2fk instructions per request (%d log lines)\n", m, l, n, t / n / 1000, a }'
  done
done
