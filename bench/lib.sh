# Helpers shared by the benchmarks (sourced, not run). Every benchmark pins wrk to CPU 0 and
# what it measures (proxy, backend, store) to CPU 1.

# Installs nginx-light and wrk when missing (as root), else names them and stops.
bench_tools() {
    local need=()
    command -v nginx >/dev/null || need+=(nginx-light)
    command -v wrk >/dev/null || need+=(wrk)
    if ((${#need[@]})); then
        if [ "$(id -u)" = 0 ]; then
            apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
        else
            echo "bench needs: ${need[*]} (apt-get install them as root)" >&2
            exit 1
        fi
    fi
    [ "$(nproc)" -ge 2 ] || { echo "bench needs 2 CPUs (wrk on one, proxy + backend on the other)" >&2; exit 1; }
}

# Installs nginx's Lua module (the session-aware peer, bench/nginx-sessions.conf) when missing.
bench_lua() {
    [ -e /usr/share/nginx/modules/ngx_http_lua_module.so ] && return 0
    if [ "$(id -u)" = 0 ]; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libnginx-mod-http-lua
    else
        echo "PEER=lua needs libnginx-mod-http-lua (apt-get install it as root)" >&2
        exit 1
    fi
}

wait_port() { for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

# CPU time (user + system, all threads) of a process and its children, in clock ticks.
cpu_ticks() {
    local total=0 p
    for p in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$total"
}

peak_rss_kib() {
    local max=0 p v
    for p in "$1" $(pgrep -P "$1" || true); do
        v=$(awk '/VmHWM/ {print $2}' "/proc/$p/status"); ((v > max)) && max=$v
    done
    echo "$max"
}

to_us() { # wrk latency ("123.45us", "1.20ms", "2.00s") to microseconds
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /ms$/) n *= 1000; else if (v ~ /[0-9]s$/ && v !~ /us$/) n *= 1000000; printf "%.1f", n }'
}

median() { sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

# wrk_run NAME PORT PID CONNS DURATION [wrk header args...]
#   -> "rps p50_us p99_us cpu_us_per_req requests"
wrk_run() {
    local name=$1 port=$2 pid=$3 conns=$4 dur=$5 before after out reqs hz
    shift 5
    hz=$(getconf CLK_TCK)
    before=$([ "$pid" = - ] && echo 0 || cpu_ticks "$pid")
    out=$(taskset -c 0 wrk -t1 -c"$conns" -d"$dur" --latency "$@" "http://127.0.0.1:$port/")
    after=$([ "$pid" = - ] && echo 0 || cpu_ticks "$pid")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    local rps p50 p99 errors
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
    [ -z "$errors" ] || echo "  $name: $errors" >&2
    awk -v r="$rps" -v a="$p50" -v b="$p99" -v t=$((after - before)) -v n="$reqs" -v hz="$hz" \
        'BEGIN { printf "%s %s %s %.2f %d\n", r, a, b, (n > 0 ? t * 1000000 / hz / n : 0), n }'
}
