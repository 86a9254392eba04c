#!/usr/bin/env bash
# Tests a chapter's server program as a reader runs it:
#   --help exits 0; a bad option exits 2 with usage; it prints "listening on ADDR:PORT"
#   with --port 0; ch01_echo_client gets byte-exact echoes from it; SIGINT (Ctrl+C)
#   makes it exit 0 on its own.
# usage: program_test.sh [--emulator CMD] <server program> <ch01_echo_client>
#   --emulator: run both programs through CMD (the Windows build: cmake/wine-run.sh).
#   Wine turns SIGINT into a console Ctrl+C event, so the Windows build's console
#   control handler is what answers it there, and it prints "Ctrl+C: stopping".
set -u
emulator=()
if [ "${1:-}" = "--emulator" ]; then emulator=("$2"); shift 2; fi
server_program=$1 client_program=$2
server() { "${emulator[@]}" "$server_program" "$@"; }
client() { "${emulator[@]}" "$client_program" "$@"; }
tmp=$(mktemp -d); pid=""
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; [ -f "$tmp/out" ] && sed 's/^/  server: /' "$tmp/out"; exit 1; }

server --help >"$tmp/help" 2>&1 || fail "--help did not exit 0"
grep -q -- "--port" "$tmp/help" || fail "--help does not mention --port"
server --port nope >/dev/null 2>&1; [ $? -eq 2 ] || fail "a bad --port did not exit 2"

"${emulator[@]}" "$server_program" --port 0 >"$tmp/out" 2>&1 &  # not through server(): $! must be the program
pid=$!
port=""
for _ in $(seq 100); do
    port=$(tr -d '\r' <"$tmp/out" | sed -n 's/^listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p')
    [ -n "$port" ] && break
    sleep 0.1
done
[ -n "$port" ] || fail "no 'listening on 127.0.0.1:PORT' line within 10 s"

client --port "$port" --count 3 --interval 0 --message "program test" >"$tmp/client" 2>&1 \
    || { cat "$tmp/client"; fail "the client failed"; }
grep -q "^3 message(s) echoed byte for byte" "$tmp/client" || { cat "$tmp/client"; fail "the client's summary is wrong"; }

kill -INT "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && fail "SIGINT did not stop the server within 10 s"
wait "$pid"; rc=$?; pid=""
[ $rc -eq 0 ] || fail "the server exited $rc after SIGINT"
grep -q -E "^(SIGINT|Ctrl\+C): stopping" "$tmp/out" || fail "no 'SIGINT: stopping' (Linux) or 'Ctrl+C: stopping' (Windows) line"
echo "ok: $(basename "$server_program") --help, bad option, listening line, echo, Ctrl+C"
