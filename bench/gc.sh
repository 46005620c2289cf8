#!/usr/bin/env bash
# Garbage collection against its baseline (issue 14), in one run: a generated
# repository of CHUNKS chunk files and POINTS points (bench/gc_repository.cc:
# 90% of the chunks referenced, consecutive points sharing most of theirs,
# 10% garbage), then
#   baseline  `find chunks -type f | wc -l` plus reading every index once
#             (cat to /dev/null)
#   gc        `ferry gc` wall time (mark: every index read and checked
#             against its manifest; sweep: every chunk directory read, the
#             unmarked chunks stat'ed and removed)
# cold (page cache dropped before each, when this may drop it) and warm
# (each right after a run that read the same files). The cold GC removes the
# garbage; the warm one finds none left, so it measures mark and sweep only.
# Then the file system's own cost of removing as many files as the GC removed
# (32-byte files in 4096 directories, created, cache dropped, `find -delete`):
# a GC that removes garbage cannot be faster than the unlinks (set
# BENCH_UNLINK_FLOOR=0 to skip).
# Usage: bench/gc.sh [WORKDIR] [CHUNKS] [POINTS] [WIDTH]
#   (default /var/tmp/ferry-bench-gc 1000000 1000 5000; the repository is deleted after)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${FERRY_BUILD_DIR:-$root/build}
work=${1:-/var/tmp/ferry-bench-gc}
chunks=${2:-1000000}
points=${3:-1000}
width=${4:-5000}
cmake --build "$build" --target ferry-bench-gc-repository ferry ferry-host >/dev/null
ferry=$build/bin/ferry
rm -rf "$work"; mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
repo=$work/repo

echo "== generating $chunks chunks, $points points" >&2
gen_start=$(date +%s.%N)
"$build/bench/ferry-bench-gc-repository" "$repo" "$chunks" "$points" "$width"
echo "generate_s=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $gen_start}")"
echo "index_bytes=$(cat "$repo"/points/*/*.fidx | wc -c)"
sync

drop() { [[ $can_drop == 1 ]] && { sync; echo 3 >/proc/sys/vm/drop_caches; }; return 0; }
can_drop=0
if (sync; echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then can_drop=1; fi
echo "drop_caches=$can_drop"

now() { date +%s.%N; }
baseline() {
  local t0 t1 t2 n
  t0=$(now)
  n=$(cd "$repo" && find chunks -type f | wc -l)
  t1=$(now)
  cat "$repo"/points/*/*.fidx >/dev/null
  t2=$(now)
  echo "$n $(awk "BEGIN{print $t1 - $t0}") $(awk "BEGIN{print $t2 - $t1}")"
}
gc() {
  local t0 out
  t0=$(now)
  out=$("$ferry" --quiet gc --repo "$repo" --json)
  echo "$(awk "BEGIN{print $(now) - $t0}") $out"
}
report() {  # label baseline-line gc-line
  local label=$1 n find_s idx_s gc_s json
  read -r n find_s idx_s <<<"$2"
  gc_s=${3%% *}; json=${3#* }
  echo "${label}_files=$n"
  echo "${label}_find_s=$(printf %.2f "$find_s")"
  echo "${label}_read_indexes_s=$(printf %.2f "$idx_s")"
  echo "${label}_baseline_s=$(awk "BEGIN{printf \"%.2f\", $find_s + $idx_s}")"
  echo "${label}_gc_s=$(printf %.2f "$gc_s")"
  echo "${label}_gc_vs_baseline=$(awk "BEGIN{printf \"%.2f\", $gc_s / ($find_s + $idx_s)}")"
  echo "${label}_gc=$json"
}

if [[ $can_drop == 1 ]]; then
  drop; b=$(baseline)
  drop; g=$(gc)
  report cold "$b" "$g"
else
  echo "note: cannot drop the page cache here; warm figures only" >&2
  baseline >/dev/null  # warm-up
  b=$(baseline); g=$(gc)
  report warm_with_garbage "$b" "$g"
fi
first_gc=$g
b=$(baseline); g=$(gc)
report warm "$b" "$g"
echo "gc_rss_kib=$( { /usr/bin/time -f %M "$ferry" --quiet gc --repo "$repo" >/dev/null; } 2>&1 | tail -1)"

if [[ ${BENCH_UNLINK_FLOOR:-1} == 1 ]]; then
  garbage=$(sed -n 's/.*"chunks_removed":\([0-9]*\).*/\1/p' <<<"${cold_line:-$first_gc}")
  floor=$work/unlink-floor
  mkdir -p "$floor"
  python3 - "$floor" "$garbage" <<'PY'
import hashlib, os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    h = hashlib.sha256(i.to_bytes(8, "little")).hexdigest()
    os.makedirs(os.path.join(d, h[:3]), exist_ok=True)
    with open(os.path.join(d, h[:3], h), "wb") as f:
        f.write(b"x" * 32)
PY
  drop
  t0=$(now)
  find "$floor" -type f -delete
  echo "unlink_floor_files=$garbage"
  echo "unlink_floor_s=$(awk "BEGIN{printf \"%.2f\", $(now) - $t0}")"
fi
