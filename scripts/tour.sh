#!/usr/bin/env bash
# The tour: build everything, run each chapter's server against real clients, print
# one line per chapter of what its model did, then build the docs.
#
#   scripts/tour.sh
#
# Servers listen on 127.0.0.1 with a port the OS picks; every load is bounded and
# every server is stopped with Ctrl+C (SIGINT), the way a reader stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bash scripts/deps.sh
echo "=== building (preset release)"
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc 2>/dev/null || echo 2)" >build/tour-build.log 2>&1 \
    || { tail -n 40 build/tour-build.log; exit 1; }
bin=$root/build/release
tmp=$(mktemp -d)
server_pid=""
own_wineserver=0
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
    [ "$own_wineserver" -eq 1 ] && bash "$root/cmake/wine-run.sh" --stop-server
    rm -rf "$tmp"
}
trap cleanup EXIT

# start_server <program> [args...]: starts it on a free port, sets $port and $server_pid.
# Programs start through ${launcher[@]} when it is set (Wine, for the Windows builds).
launcher=()
start_server() {
    "${launcher[@]}" "$@" --port 0 >"$tmp/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
        port=$(tr -d '\r' <"$tmp/server.log" | sed -n 's/^listening on .*:\([0-9][0-9]*\)$/\1/p')
        [ -n "$port" ] && return 0
        sleep 0.1
    done
    echo "server did not start:"; cat "$tmp/server.log"; exit 1
}

# stop_server: Ctrl+C, then the server must exit 0 on its own.
stop_server() {
    kill -INT "$server_pid"
    if ! wait "$server_pid"; then echo "server did not stop cleanly:"; cat "$tmp/server.log"; exit 1; fi
    server_pid=""
}

# peak_threads <pid> <command...>: runs the command while sampling the server's
# thread count; prints the command's output, then "peak threads: N".
peak_threads() {
    local pid=$1 peak=0 n; shift
    "$@" >"$tmp/load.out" 2>&1 &
    local load=$!
    while kill -0 "$load" 2>/dev/null; do
        n=$(awk '/^Threads:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        [ "${n:-0}" -gt "$peak" ] && peak=$n
        sleep 0.02
    done
    wait "$load" || { cat "$tmp/load.out"; exit 1; }
    cat "$tmp/load.out"
    echo "peak threads: $peak"
}

lines=()
run_chapter() {  # name, server program, clients, rounds, [idle connections held open, [server options...]]
    local name=$1 prog=$2 clients=$3 rounds=$4 idle=${5:-0} out rate threads
    start_server "$prog" "${@:6}"
    out=$(peak_threads "$server_pid" "$bin/bench/echo_load" --port "$port" --clients "$clients" --rounds "$rounds" --size 64 --idle "$idle")
    stop_server
    rate=$(sed -n 's/.*(\([0-9]*\) round trips\/s).*/\1/p' <<<"$out")
    threads=$(sed -n 's/^peak threads: //p' <<<"$out")
    lines+=("$(printf '| %-24s | %7s | %6s | %14s | %20s |' "$name" "$clients" "$rounds" "$rate" "$threads")")
    echo "$name: $(head -1 <<<"$out"); server peaked at $threads threads"
}

echo
echo "=== chapter 1: blocking echo, one client at a time"
start_server "$bin/chapters/01-blocking-echo/ch01_echo_server"
"$bin/chapters/01-blocking-echo/ch01_echo_client" --port "$port" --count 3 --interval 200
# A second client while the first is connected waits in the backlog: with a short
# timeout it gives up, which is chapter 1's lesson.
"$bin/chapters/01-blocking-echo/ch01_echo_client" --port "$port" --count 0 --interval 100 --quiet >/dev/null 2>&1 &
holder=$!
sleep 0.5
if "$bin/chapters/01-blocking-echo/ch01_echo_client" --port "$port" --timeout 500 --quiet >/dev/null 2>&1; then
    echo "ch01: unexpected: a second client was served while the first was connected"; exit 1
fi
echo "ch01: while one client stays connected, a second one gets no reply (it timed out after 500 ms)"
kill -INT "$holder"; wait "$holder" || true
stop_server
run_chapter "01 blocking-echo" "$bin/chapters/01-blocking-echo/ch01_echo_server" 1 2000

echo
echo "=== chapter 2: a thread per client"
run_chapter "02 thread-per-client" "$bin/chapters/02-thread-per-client/ch02_echo_server" 1 2000
run_chapter "02 thread-per-client" "$bin/chapters/02-thread-per-client/ch02_echo_server" 100 200

echo
echo "=== chapter 3: select(), one thread"
run_chapter "03 select" "$bin/chapters/03-select/ch03_echo_server" 1 2000
run_chapter "03 select" "$bin/chapters/03-select/ch03_echo_server" 100 200
run_chapter "03 select, +900 idle" "$bin/chapters/03-select/ch03_echo_server" 1 5000 900

echo
echo "=== chapter 4: readiness (epoll here; WSAEventSelect on Windows), one thread"
run_chapter "04 epoll" "$bin/chapters/04-readiness/ch04_echo_server" 1 2000
run_chapter "04 epoll" "$bin/chapters/04-readiness/ch04_echo_server" 100 200
run_chapter "04 epoll, +900 idle" "$bin/chapters/04-readiness/ch04_echo_server" 1 5000 900

echo
echo "=== chapter 7: completion (io_uring here; the completion port on Windows), one worker"
run_chapter "07 io_uring" "$bin/chapters/07-completion-port/ch07_echo_server" 1 2000
run_chapter "07 io_uring" "$bin/chapters/07-completion-port/ch07_echo_server" 100 200
run_chapter "07 io_uring, +900 idle" "$bin/chapters/07-completion-port/ch07_echo_server" 1 5000 900

echo
echo "=== chapter 8: a pool of workers (io_uring here: one ring per worker; one completion port on Windows)"
run_chapter "08 io_uring, 1 ring" "$bin/chapters/08-worker-pool/ch08_echo_server" 100 200 0 --threads 1
run_chapter "08 io_uring, 2 rings" "$bin/chapters/08-worker-pool/ch08_echo_server" 100 200 0 --threads 2

echo
echo "=== chapter 9: lifetime and shutdown (the same pool; stop() drains every operation first)"
run_chapter "09 io_uring, 2 rings" "$bin/chapters/09-lifetime-and-shutdown/ch09_echo_server" 100 200 0 --threads 2

echo
echo "=== chapter 10: no accept thread (one multishot accept here; AcceptEx on Windows)"
run_chapter "10 io_uring, 2 rings" "$bin/chapters/10-acceptex/ch10_echo_server" 100 200 0 --threads 2 --quiet
echo "ch10: $(grep '^accepts:' "$tmp/server.log")"

echo
echo "=== chapter 11: flow control (a provided buffer ring here; zero-byte receives and a pool on Windows)"
run_chapter "11 io_uring, +900 idle" "$bin/chapters/11-flow-control/ch11_echo_server" 1 5000 900 --threads 2 --quiet
echo "ch11: $(grep '^memory:' "$tmp/server.log")"

echo
echo "=== chapter 12: timeouts (link timeouts here; a sweep of deadlines on Windows)"
start_server "$bin/chapters/12-timeouts/ch12_echo_server" --idle-timeout-ms 300 --quiet
# A client that connects and says nothing: the server closes it on its own. (bash's
# /dev/tcp is the client; read ends at the server's FIN, or gives up after 5 s.)
began=$(date +%s%N)
exec 3<>"/dev/tcp/127.0.0.1/$port"
rc=0; read -r -t 5 _ <&3 || rc=$?
exec 3<&-
[ "$rc" -gt 128 ] && { echo "ch12: unexpected: the silent client was not closed within 5 s"; exit 1; }
echo "ch12: a client that said nothing was closed by the 300 ms idle timeout after $(( ($(date +%s%N) - began) / 1000000 )) ms"
stop_server
echo "ch12: $(grep '^timeouts:' "$tmp/server.log")"
run_chapter "12 io_uring, timeouts on" "$bin/chapters/12-timeouts/ch12_echo_server" 100 200 0 --threads 2 --quiet --idle-timeout-ms 10000 --send-timeout-ms 10000

echo
echo "=== chapter 13: performance (multishot receives, single-issuer rings; GQCSEx and skip-on-success on Windows)"
run_chapter "13 io_uring, 1 ring" "$bin/chapters/13-performance/ch13_echo_server" 100 200 0 --threads 1 --quiet
echo "ch13: $(grep '^costs:' "$tmp/server.log")"
run_chapter "13 io_uring, no steps" "$bin/chapters/13-performance/ch13_echo_server" 100 200 0 --threads 1 --quiet \
    --without batch,multishot,single-issuer,registered-ring,fixed-files
echo "ch13 --without every step: $(grep '^costs:' "$tmp/server.log")"
echo "ch13: every server side by side, plotted: bench/compare.py (bench/results/)"

# The Windows-only chapters (and the Windows twins of 4 and 7), cross-built with
# mingw-w64 and run under Wine, driven by the same Linux load generator: Wine's
# sockets are the host's. These rates measure Wine as much as the model.
if command -v x86_64-w64-mingw32-g++-posix >/dev/null && [ -x /usr/lib/wine/wine64 ]; then
    echo
    echo "=== Windows models under Wine (building preset mingw-wine: the servers only)"
    cmake --preset mingw-wine >/dev/null
    cmake --build --preset mingw-wine --target ch04_echo_server ch05_echo_server ch06_echo_server ch07_echo_server ch08_echo_server ch09_echo_server \
        ch10_echo_server ch11_echo_server ch12_echo_server ch13_echo_server \
        >build/tour-wine-build.log 2>&1 || { tail -n 40 build/tour-wine-build.log; exit 1; }
    # One wineserver for the whole run, its prefix started now (see cmake/wine-run.sh):
    # otherwise the first program starts the prefix's own programs, and a wineserver
    # that exits between two programs can cut the next one off at its start.
    own_wineserver=0
    bash "$root/cmake/wine-run.sh" --start-server && own_wineserver=1
    launcher=(bash "$root/cmake/wine-run.sh")
    win=$root/build/mingw-wine/chapters
    run_chapter "04 WSAEventSelect, Wine" "$win/04-readiness/ch04_echo_server.exe" 100 50
    run_chapter "05 overlapped, Wine" "$win/05-overlapped-events/ch05_echo_server.exe" 100 50
    run_chapter "06 routines, Wine" "$win/06-completion-routines/ch06_echo_server.exe" 100 50
    run_chapter "07 IOCP, Wine" "$win/07-completion-port/ch07_echo_server.exe" 100 50
    run_chapter "08 IOCP, 4 workers, Wine" "$win/08-worker-pool/ch08_echo_server.exe" 100 50 0 --threads 4
    run_chapter "09 IOCP, 4 workers, Wine" "$win/09-lifetime-and-shutdown/ch09_echo_server.exe" 100 50 0 --threads 4
    run_chapter "10 AcceptEx x16, Wine" "$win/10-acceptex/ch10_echo_server.exe" 100 50 0 --threads 4 --accepts 16 --quiet
    echo "ch10: $(tr -d '\r' <"$tmp/server.log" | grep '^accepts:')"
    run_chapter "11 pool, +900 idle, Wine" "$win/11-flow-control/ch11_echo_server.exe" 1 2000 900 --threads 4 --quiet
    echo "ch11: $(tr -d '\r' <"$tmp/server.log" | grep '^memory:')"
    run_chapter "12 timeouts on, Wine" "$win/12-timeouts/ch12_echo_server.exe" 100 50 0 --threads 4 --quiet --idle-timeout-ms 10000 --send-timeout-ms 10000
    run_chapter "13 GQCSEx + skip, Wine" "$win/13-performance/ch13_echo_server.exe" 100 50 0 --threads 4 --quiet
    echo "ch13: $(tr -d '\r' <"$tmp/server.log" | grep '^costs:')"
    run_chapter "13 no steps, Wine" "$win/13-performance/ch13_echo_server.exe" 100 50 0 --threads 4 --quiet \
        --without batch,skip-on-success
    echo "ch13 --without batch,skip-on-success: $(tr -d '\r' <"$tmp/server.log" | grep '^costs:')"
    launcher=()
    [ "$own_wineserver" -eq 1 ] && bash "$root/cmake/wine-run.sh" --stop-server
    own_wineserver=0
else
    echo "(no mingw-w64 or Wine: the Windows-only chapters 5 and 6 are not run here)"
fi

echo
echo "=== chapter 14: the capstone - an engine, and a chat room on it"
run_chapter "14 engine echo, 2 rings" "$bin/chapters/14-capstone/ch14_echo_server" 100 200 0 --threads 2
# A live chat: three scripted clients, each a terminal program a person could use,
# typing on a schedule; each one's screen is printed after.
start_server "$bin/chapters/14-capstone/ch14_chat_server" --threads 2
chat() {  # name, then lines to type, one every 0.4 s after a head start
    local name=$1 delay=$2; shift 2
    { sleep "$delay"; for line in "$@"; do echo "$line"; sleep 0.4; done; sleep 0.8; } |
        "$bin/chapters/14-capstone/ch14_chat_client" --port "$port" --name "$name" >"$tmp/chat-$name.log" 2>&1
}
chat ana 0.2 "hello, is anyone here?" "nice to meet you, bo" "/list" &
a=$!
chat bo 0.4 "hi ana, bo here" "cy is coming too" &
b=$!
chat cy 0.9 "hi both!" "/quit" &
c=$!
wait "$a" "$b" "$c"
stop_server
for name in ana bo cy; do
    echo "--- $name's screen"
    cat "$tmp/chat-$name.log"
done
tail -n 1 "$tmp/server.log"

echo
echo "=== side by side (this machine, this run; 64-byte messages, every byte checked)"
echo "| chapter                  | clients | rounds | round trips/s  | server threads (peak) |"
echo "|--------------------------|--------:|-------:|---------------:|---------------------:|"
printf '%s\n' "${lines[@]}"

echo
echo "=== docs"
cmake --build --preset release --target docs >build/tour-docs.log 2>&1 || { tail -n 40 build/tour-docs.log; exit 1; }
echo "docs: $bin/docs/html/index.html"
