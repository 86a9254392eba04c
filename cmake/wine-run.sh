#!/bin/sh
# Runs a Windows executable under Wine for ctest.
# - Quiet by default: Wine's 'fixme:' lines are about Wine, not about the program
#   (set WINEDEBUG yourself to see them).
# - No Mono or Gecko: the first start creates the Wine prefix (~/.wine), and without
#   this it would offer to download them; the tests need neither.
#
# Two more uses, for scripts/test.sh around a whole ctest run:
#   wine-run.sh --start-server   a wineserver that stays up until --stop-server, with
#                                the prefix's own programs (winedevice.exe, ...) started
#                                now, their output going nowhere. Otherwise the first test
#                                starts them, they inherit that test's output pipe, and
#                                ctest counts the test as running until the server exits,
#                                minutes later, holding one of its parallel slots.
#                                Exits 1 if a wineserver is already running.
#   wine-run.sh --stop-server    ends that wineserver and every Wine process it serves.
: "${WINEDEBUG:=-all}"
: "${WINEDLLOVERRIDES:=mscoree,mshtml=}"
export WINEDEBUG WINEDLLOVERRIDES
if [ -z "${WINEPREFIX:-}" ] && [ -z "${HOME:-}" ]; then
    WINEPREFIX="${TMPDIR:-/tmp}/iocp-wineprefix-$(id -u)"   # Wine needs a home for its prefix
    export WINEPREFIX
fi
wine=wine64
[ -x /usr/lib/wine/wine64 ] && wine=/usr/lib/wine/wine64
wineserver=wineserver
[ -x /usr/lib/wine/wineserver ] && wineserver=/usr/lib/wine/wineserver

case "${1:-}" in
    --start-server)
        mkdir -p "${WINEPREFIX:-$HOME/.wine}" || exit 1
        "$wineserver" -p </dev/null >/dev/null 2>&1 || exit 1
        exec "$wine" wineboot </dev/null >/dev/null 2>&1 ;;
    --stop-server)
        exec "$wineserver" -k ;;
esac
exec "$wine" "$@"
