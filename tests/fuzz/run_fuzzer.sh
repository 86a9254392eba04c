#!/usr/bin/env bash
# tests/fuzz/run_fuzzer.sh FUZZER CORPUS SECONDS - a bounded libFuzzer run for ctest.
# It reads the committed corpus and writes what it finds new to a scratch folder (never
# into the corpus: growing it is a deliberate step, see tests/fuzz/README.md). A crash
# or a failed property makes the run, and the test, fail, and its input is printed.
set -uo pipefail
fuzzer=$1 corpus=$2 seconds=$3
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cd "$scratch" || exit 1
mkdir new
"$fuzzer" -max_total_time="$seconds" -timeout=5 -rss_limit_mb=1024 -print_final_stats=1 new "$corpus" > log 2>&1
status=$?
grep -E "INFO: seed|stat::number_of_executed_units|stat::new_units_added|frame fuzz|SUMMARY|ERROR" log
if [ "$status" -ne 0 ]; then
    tail -40 log
    for f in crash-* leak-* timeout-*; do [ -e "$f" ] && { echo "input $f:"; od -A d -t x1 "$f" | head -20; }; done
fi
exit "$status"
