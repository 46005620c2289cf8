#!/usr/bin/env bash
# What the commit-time "no missing chunk" check costs on a 16 GiB disk with
# 1 MiB chunks (16,384 distinct chunks), caches cold where they can be dropped.
# Usage: bench/commit-check.sh [WORKDIR] [DISK_GIB]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${FERRY_BUILD_DIR:-$root/build}
cmake --build "$build" --target ferry-bench-commit-check >/dev/null
work=${1:-/var/tmp/ferry-bench-commit}
rm -rf "$work"; mkdir -p "$work"
drop="sync; echo 3 > /proc/sys/vm/drop_caches"
sh -c "$drop" 2>/dev/null || drop=""
"$build/bench/ferry-bench-commit-check" "$work/repo" "${2:-16}" ${drop:+"$drop"}
rm -rf "$work"
