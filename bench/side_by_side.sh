#!/usr/bin/env bash
# Runs chapter servers side by side, in one session, and prints a table of medians.
#
#   bench/side_by_side.sh [--runs N] [--build DIR] CHAPTER...
#   bench/side_by_side.sh 03-select 04-readiness
#
# For each run, each server in turn is started on a free loopback port and driven by
# bench/echo_load in two cases: 100 clients all busy, and 1 busy client among 900
# idle connections. The servers take turns within every run, so a slower moment of
# the machine hits all of them alike; compare the ratios, not the absolute rates.
set -euo pipefail
runs=3
build=build/release
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --build) build=$2; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--runs N] [--build DIR] CHAPTER..." >&2; exit 2; }
load=$build/bench/echo_load
[ -x "$load" ] || { echo "no $load: build the release preset first" >&2; exit 1; }
tmp=$(mktemp -d); spid=""
trap '[ -n "$spid" ] && kill -9 "$spid" 2>/dev/null; rm -rf "$tmp"' EXIT

rate() { sed -n 's/.*(\([0-9]*\) round trips\/s).*/\1/p'; }
cases=("100 busy" "1 busy + 900 idle")
args=("--clients 100 --rounds 200 --size 64" "--clients 1 --rounds 20000 --size 64 --idle 900")

for run in $(seq "$runs"); do
    for chapter in "$@"; do
        num=${chapter%%-*}
        server=$build/chapters/$chapter/ch${num}_echo_server
        [ -x "$server" ] || { echo "no $server" >&2; exit 1; }
        "$server" --port 0 >"$tmp/out" 2>&1 &
        spid=$!
        port=""
        for _ in $(seq 100); do
            port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$tmp/out")
            [ -n "$port" ] && break
            sleep 0.1
        done
        [ -n "$port" ] || { echo "$server printed no 'listening on' line" >&2; exit 1; }
        for i in "${!cases[@]}"; do
            # shellcheck disable=SC2086  # args[i] is a list of options
            "$load" --port "$port" ${args[$i]} | rate >>"$tmp/$num-$i"
        done
        kill -INT "$spid"; wait "$spid" || true; spid=""
    done
    echo "run $run of $runs done" >&2
done

median() { sort -n "$1" | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : int((v[NR/2]+v[NR/2+1])/2)}'; }
printf '| server |'; for c in "${cases[@]}"; do printf ' %s |' "$c"; done; echo
printf '|---|'; for _ in "${cases[@]}"; do printf -- '---|'; done; echo
first=${1%%-*}
for chapter in "$@"; do
    num=${chapter%%-*}
    printf '| chapter %s |' "$chapter"
    for i in "${!cases[@]}"; do
        m=$(median "$tmp/$num-$i"); base=$(median "$tmp/$first-$i")
        if [ "$num" = "$first" ]; then printf ' %s |' "$m"
        else printf ' %s (%s x chapter %s) |' "$m" "$(awk -v a="$m" -v b="$base" 'BEGIN{printf "%.1f", a/b}')" "$first"; fi
    done
    echo
done
echo "(medians of $runs runs, round trips/s; $(nproc) cores; $(date -u +%Y-%m-%d))"
