#!/usr/bin/env bash
# Incremental-backup benchmark (issue 3), side by side in one run:
#   a 16 GiB qcow2 disk holding the reference disk's 2 GiB of allocated data,
#   a full backup, then 1% of the disk (164 MiB) rewritten at random (1 MiB
#   writes at random 4 KiB-aligned offsets, through the running VM), then the
#   incremental; then, with the chain's bitmap removed, the fallback run.
# The yardstick for the fallback: a full read (nbdcopy to null) plus hashing
# (openssl dgst -sha256) of the allocated data.
# Usage: bench/incremental-backup.sh [WORKDIR]   (default /var/tmp/ferry-bench)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ferry=${FERRY:-${FERRY_BUILD_DIR:-$root/build}/bin/ferry}
work=${1:-/var/tmp/ferry-bench}
chunk_sizes=${BENCH_CHUNK_SIZES:-"1M 4M"}
mkdir -p "$work"
export FERRY_RUNTIME_DIR=$work/run FERRY_SCRATCH_DIR=$work/scratch
# shellcheck source=../tests/lib/vm.sh
. "$root/tests/lib/vm.sh"
trap vm_cleanup_all EXIT
MiB=$((1024 * 1024))
DISK=$((16 * 1024 * MiB))

"$root/bench/make-reference-disk.sh" "$work/ref.qcow2" >&2
[[ -f $work/allocated.raw ]] || "$root/bench/reference-allocated.sh" "$work/ref.qcow2" -o "$work/allocated.raw" >&2

# Yardstick: read everything allocated over NBD, and hash it.
qemu-nbd -r -f qcow2 --socket="$work/yard.sock" --persistent "$work/ref.qcow2" & nbd=$!
for _ in $(seq 50); do [[ -S $work/yard.sock ]] && break; sleep 0.1; done
cat "$work/allocated.raw" >/dev/null
t0=$(date +%s.%N); nbdcopy "nbd+unix:///?socket=$work/yard.sock" null: ; t1=$(date +%s.%N)
kill $nbd; wait $nbd 2>/dev/null || true
read_s=$(awk "BEGIN{print $t1 - $t0}")
t0=$(date +%s.%N); openssl dgst -sha256 "$work/allocated.raw" >/dev/null; t1=$(date +%s.%N)
hash_s=$(awk "BEGIN{print $t1 - $t0}")
echo "full_read_s=$read_s"
echo "hash_s=$hash_s"
echo "read_plus_hash_s=$(awk "BEGIN{print $read_s + $hash_s}")"

timed() {  # prints "wall rss_kb" of a ferry backup; its point id goes to $work/point
  /usr/bin/time -f "%e %M" -o "$work/time" "$ferry" --quiet backup --repo "$work/repo" --qmp "$work/vm/qmp.sock" >"$work/point"
  cat "$work/time"
}
read_bytes() {
  "$ferry" list --repo "$work/repo" --json | python3 -c '
import json, sys
p = [p for p in json.load(sys.stdin)["points"] if p["id"] == sys.argv[1]][0]
print(sum(d["stats"]["read_bytes"] for d in p["disks"]))' "$(cat "$work/point")"
}

for cs in $chunk_sizes; do
  chunk=$(( ${cs%M} * MiB ))
  vm_stop "$work/vm" 2>/dev/null || true
  rm -f "$work/inc.qcow2"
  qemu-img convert -f raw -O qcow2 "$work/allocated.raw" "$work/inc.qcow2"
  qemu-img resize -q "$work/inc.qcow2" $DISK
  VM_NAME=bench-inc vm_start "$work/vm" "virtio0=$work/inc.qcow2"
  rm -rf "$work/repo"
  "$ferry" --quiet init --repo "$work/repo" --chunk-size "$cs"
  cat "$work/inc.qcow2" >/dev/null
  read -r full_s full_rss <<<"$(timed)"

  # 1% of the disk rewritten at random.
  RANDOM=42
  declare -A touched=()
  written=0
  while ((written < DISK / 100)); do
    off=$(( ((RANDOM << 30 | RANDOM << 15 | RANDOM) % ((DISK - MiB) / 4096)) * 4096 ))
    vm_write "$work/vm" virtio0 $((RANDOM % 255 + 1)) $off $MiB
    for ((c = off / chunk; c <= (off + MiB - 1) / chunk; c++)); do touched[$c]=1; done
    written=$((written + MiB))
  done
  rounded=$(( ${#touched[@]} * chunk ))
  read -r inc_s inc_rss <<<"$(timed)"
  inc_read=$(read_bytes)
  unset touched

  # The whole bitmap lost: the fallback reads everything, stores nothing new.
  bitmap=$("$ferry" list --repo "$work/repo" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["points"][-1]["disks"][0]["cbt"]["bitmap"])')
  vm_qmp "$work/vm" block-dirty-bitmap-remove "{\"node\": \"$(vm_node virtio0)\", \"name\": \"$bitmap\"}" >/dev/null
  read -r fb_s fb_rss <<<"$(timed)"

  echo "chunk_${cs}_full_s=$full_s"
  echo "chunk_${cs}_changed_bytes=$written"
  echo "chunk_${cs}_changed_rounded_to_chunks=$rounded"
  echo "chunk_${cs}_incremental_s=$inc_s"
  echo "chunk_${cs}_incremental_read_bytes=$inc_read"
  echo "chunk_${cs}_incremental_vs_full=$(awk "BEGIN{printf \"%.3f\", $inc_s / $full_s}")"
  echo "chunk_${cs}_read_vs_rounded=$(awk "BEGIN{printf \"%.2f\", $inc_read / $rounded}")"
  echo "chunk_${cs}_fallback_s=$fb_s"
  echo "chunk_${cs}_fallback_vs_read_plus_hash=$(awk "BEGIN{printf \"%.2f\", $fb_s / ($read_s + $hash_s)}")"
  echo "chunk_${cs}_peak_rss_mib=$(( (full_rss > inc_rss ? full_rss : inc_rss) / 1024 ))"
done
