#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages this project needs, and only those missing.
# Safe to run again: when everything is there it installs nothing and says so.
#
#   scripts/deps.sh            # everything: native, sanitizers, mingw-w64 + Wine, docs
set -euo pipefail

packages=(
    cmake ninja-build g++ pkg-config        # the native build
    clang                                   # a second compiler (scripts/test.sh's clang flavour)
    libgtest-dev googletest                 # GoogleTest: built library + sources (for mingw)
    g++-mingw-w64-x86-64-posix              # the Windows build (posix threads for std::thread)
    wine64                                  # runs the Windows tests
    liburing-dev                            # the io_uring twins (chapters 7 on)
    doxygen graphviz                        # the docs and their diagrams
    doxygen-awesome-css                     # the docs' theme (light and dark)
    python3                                 # the docs' "what changed since the last chapter" pages
    libboost-dev                            # bench/peers/asio_echo: the Boost.Asio peer
    python3-matplotlib                      # bench/compare.py's plots
    linux-perf                              # bench/cpu_breakdown.py: where a server's CPU goes
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "deps: all ${#packages[@]} packages already installed"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "deps: not root and no sudo; install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "deps: done"
