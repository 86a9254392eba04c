#!/bin/sh
# Runs a Windows executable under Wine for ctest.
# - Quiet by default: Wine's 'fixme:' lines are about Wine, not about the program
#   (set WINEDEBUG yourself to see them).
# - No Mono or Gecko: the first start creates the Wine prefix (~/.wine), and without
#   this it would offer to download them; the tests need neither.
: "${WINEDEBUG:=-all}"
: "${WINEDLLOVERRIDES:=mscoree,mshtml=}"
export WINEDEBUG WINEDLLOVERRIDES
if [ -z "${WINEPREFIX:-}" ] && [ -z "${HOME:-}" ]; then
    WINEPREFIX="${TMPDIR:-/tmp}/iocp-wineprefix-$(id -u)"   # Wine needs a home for its prefix
    export WINEPREFIX
fi
if [ -x /usr/lib/wine/wine64 ]; then exec /usr/lib/wine/wine64 "$@"; fi
exec wine64 "$@"
