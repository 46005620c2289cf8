#!/usr/bin/env bash
# Full-backup benchmark (issue 2), side by side in one run on this machine:
#   - the read limit: nbdcopy from qemu-nbd of the reference disk to null
#   - the compute floor: zstd -1 -T2 over the allocated data + sha256 / 2
#   - ferry backup of a running QEMU VM with the reference disk, per chunk size
# Usage: bench/full-backup.sh [WORKDIR]   (default /var/tmp/ferry-bench)
# Needs a built tree (scripts/build). Prints a table and key=value lines.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ferry=${FERRY:-${FERRY_BUILD_DIR:-$root/build}/bin/ferry}
work=${1:-/var/tmp/ferry-bench}
runs=${BENCH_RUNS:-3}
chunk_sizes=${BENCH_CHUNK_SIZES:-"1M 4M"}
mkdir -p "$work"
export FERRY_RUNTIME_DIR=$work/run FERRY_SCRATCH_DIR=$work/scratch
# shellcheck source=../tests/lib/vm.sh
. "$root/tests/lib/vm.sh"
trap vm_cleanup_all EXIT

"$root/bench/make-reference-disk.sh" "$work/ref.qcow2" >&2
[[ -f $work/allocated.raw ]] || "$root/bench/reference-allocated.sh" "$work/ref.qcow2" -o "$work/allocated.raw" >&2
echo "== compute floor and read limit" >&2
floor=$("$root/bench/compute-floor.sh" "$work/allocated.raw" "$work/ref.qcow2")
echo "$floor"
floor_s=$(sed -n 's/^floor_s=//p' <<<"$floor")
allocated=$(sed -n 's/^allocated_bytes=//p' <<<"$floor")

# The VM reads the reference disk read-only: the benchmark never changes it.
VM_NAME=bench vm_start "$work/vm" "virtio0=$work/ref.qcow2"
cat "$work/ref.qcow2" >/dev/null  # warm the page cache, as for the floor

for cs in $chunk_sizes; do
  best=""
  for ((i = 0; i < runs; i++)); do
    rm -rf "$work/repo"
    "$ferry" --quiet init --repo "$work/repo" --chunk-size "$cs"
    sync
    out=$( { /usr/bin/time -f "%e %U %S %M" "$ferry" --quiet backup --repo "$work/repo" --qmp "$work/vm/qmp.sock" >/dev/null; } 2>&1 | tail -1)
    read -r wall user sys rss_kb <<<"$out"
    if [[ -z $best ]] || awk "BEGIN{exit !($wall < ${best%% *})}"; then best="$wall $user $sys $rss_kb"; fi
  done
  read -r wall user sys rss_kb <<<"$best"
  stored=$(du -sb "$work/repo/chunks" | cut -f1)
  echo "ferry_${cs}_wall_s=$wall"
  echo "ferry_${cs}_cpu_s=$(awk "BEGIN{print $user + $sys}")"
  echo "ferry_${cs}_rss_mib=$((rss_kb / 1024))"
  echo "ferry_${cs}_stored_bytes=$stored"
  echo "ferry_${cs}_wall_vs_floor=$(awk "BEGIN{printf \"%.2f\", $wall / $floor_s}")"
  echo "ferry_${cs}_stored_vs_allocated=$(awk "BEGIN{printf \"%.3f\", $stored / $allocated}")"
done
