#!/usr/bin/env bash
# Verify benchmark (issue 14), side by side in one run:
#   - the floor: ferry-bench-verify-floor reads every chunk file of the
#     repository once, zstd -d's it and SHA-256s the plain data on 2 threads
#     (libzstd and OpenSSL, none of Ferry's code; bench/verify_floor.cc)
#   - `ferry verify` of the repository: every manifest and index checked,
#     every distinct chunk read once, CRC-32C, decompression and SHA-256
# The repository: a full backup of a running QEMU VM on the reference disk
# (bench/make-reference-disk.sh, 2 GiB allocated) and an incremental after
# 256 MiB of guest writes, so the points share most chunks. Page cache warm
# for both (the chunk files are read once before each timed run).
# Usage: bench/verify.sh [WORKDIR]   (default /var/tmp/ferry-bench-verify)
# Env: BENCH_RUNS (default 3, best of), BENCH_DISK (a qcow2 instead of the
# reference disk), FERRY_BUILD_DIR. Target: verify <= 1.2x the floor.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${FERRY_BUILD_DIR:-$root/build}
ferry=$build/bin/ferry
floor_bin=$build/bench/ferry-bench-verify-floor
work=${1:-/var/tmp/ferry-bench-verify}
runs=${BENCH_RUNS:-3}
mkdir -p "$work"
work=$(cd "$work" && pwd)
export FERRY_RUNTIME_DIR=$work/run FERRY_SCRATCH_DIR=$work/scratch
# shellcheck source=../tests/lib/vm.sh
. "$root/tests/lib/vm.sh"
trap vm_cleanup_all EXIT
[[ -x $floor_bin ]] || { echo "verify.sh: build $floor_bin first (scripts/build)" >&2; exit 1; }

disk=${BENCH_DISK:-$work/ref.qcow2}
[[ -n ${BENCH_DISK:-} ]] || "$root/bench/make-reference-disk.sh" "$disk" >&2
rm -rf "$work/repo" "$work/vm" "$work/overlay.qcow2"
qemu-img create -q -f qcow2 -b "$disk" -F qcow2 "$work/overlay.qcow2"
VM_NAME=bench-verify vm_start "$work/vm" "virtio0=$work/overlay.qcow2"
"$ferry" --quiet init --repo "$work/repo" --chunk-size 1M
"$ferry" --quiet backup --repo "$work/repo" --qmp "$work/vm/qmp.sock" >/dev/null
for i in 0 1 2 3; do vm_write "$work/vm" virtio0 "0x$((i + 3))$((i + 1))" "$((i * 512 + 100))M" 64M >/dev/null; done
"$ferry" --quiet backup --repo "$work/repo" --qmp "$work/vm/qmp.sock" >/dev/null
vm_stop "$work/vm"
points=$("$ferry" list --repo "$work/repo" | grep -c '^20' || true)
chunks=$(find "$work/repo/chunks" -type f | wc -l)
stored=$(du -sb "$work/repo/chunks" | cut -f1)

warm() { find "$work/repo/chunks" -type f -print0 | xargs -0 cat >/dev/null; }
best() { printf '%s\n' "$@" | sort -n | head -1; }
floors=() verifies=()
for ((i = 0; i < runs; i++)); do
  warm
  out=$("$floor_bin" "$work/repo/chunks" 2)
  floors+=("$(sed 's/^floor_s=\([0-9.]*\).*/\1/' <<<"$out")")
  warm
  t0=$(date +%s.%N)
  "$ferry" --quiet verify --repo "$work/repo" --threads 2 >"$work/verify.out"
  verifies+=("$(awk "BEGIN{printf \"%.2f\", $(date +%s.%N) - $t0}")")
  grep -q "^OK" "$work/verify.out" || { cat "$work/verify.out" >&2; exit 1; }
done
floor_s=$(best "${floors[@]}") verify_s=$(best "${verifies[@]}")
echo "repository: $points points, $chunks chunks, $((stored / 1048576)) MiB stored"
echo "floor (read + zstd -d + sha256, 2 threads): ${floors[*]} s (best $floor_s)"
echo "ferry verify --threads 2:                 ${verifies[*]} s (best $verify_s)"
echo "verify / floor: $(awk "BEGIN{printf \"%.2f\", $verify_s / $floor_s}")x (target <= 1.2x)"
