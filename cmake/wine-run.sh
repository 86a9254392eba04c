#!/bin/sh
# Runs a Windows executable under Wine for ctest. Quiet by default (Wine's 'fixme:'
# lines are about Wine, not about the program); set WINEDEBUG yourself to see them.
: "${WINEDEBUG:=-all}"
export WINEDEBUG
if [ -x /usr/lib/wine/wine64 ]; then exec /usr/lib/wine/wine64 "$@"; fi
exec wine64 "$@"
