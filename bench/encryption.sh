#!/usr/bin/env bash
# Encryption's cost (docs/encryption.md): the same data backed up into a
# plain and into an encrypted local repository, alternately, best of N runs
# each. The data is the reference disk's allocated 2 GiB as a raw file
# (bench/make-reference-disk.sh: 1 GiB of system files, 512 MiB random, 512 MiB
# duplicate), read by `ferry backup-disk` (no VM: the pipeline alone, the
# hash, compression and, encrypted, AES-256-GCM, in the page cache).
# The repositories are made in BENCH_REPO_DIR, by default /dev/shm when it has
# 3 GiB free: on these machines (nested virtualization) the kernel's cost of
# writing 1 GB into an ext4 page cache varies between runs by more than
# encryption costs in all (2.3 to 5.2 s of system time for the same backup,
# docs/benchmarks.md), so on a disk the ratio measures that noise.
# Usage: bench/encryption.sh [WORKDIR]   (default /var/tmp/ferry-bench)
# Env: BENCH_RUNS (6), BENCH_DISK (a raw file instead of the reference data),
# BENCH_REPO_DIR (where the two repositories go; WORKDIR for a disk-backed run).
# Prints key=value lines; encrypted_vs_plain is the throughput ratio of the best runs,
# encrypted_vs_plain_median that of the medians (target >= 0.9).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ferry=${FERRY:-${FERRY_BUILD_DIR:-$root/build}/bin/ferry}
work=${1:-/var/tmp/ferry-bench}
runs=${BENCH_RUNS:-6}
mkdir -p "$work"
repo_dir=${BENCH_REPO_DIR:-}
if [[ -z $repo_dir ]]; then
  repo_dir=$work
  shm_free=$(df --output=avail -B1 /dev/shm 2>/dev/null | tail -1 || echo 0)
  ((shm_free > 3 * 1024 * 1024 * 1024)) && repo_dir=/dev/shm/ferry-bench-encryption.$$
fi
mkdir -p "$repo_dir"
cleanup() {
  rm -rf "$repo_dir/repo-plain" "$repo_dir/repo-encrypted" "$work/bench.key"
  [[ $repo_dir == "$work" ]] || rmdir "$repo_dir" 2>/dev/null || true
}
trap cleanup EXIT
disk=${BENCH_DISK:-}
if [[ -z $disk ]]; then
  "$root/bench/make-reference-disk.sh" "$work/ref.qcow2" >&2
  [[ -f $work/allocated.raw ]] || "$root/bench/reference-allocated.sh" "$work/ref.qcow2" -o "$work/allocated.raw" >&2
  disk=$work/allocated.raw
fi
size=$(stat -c %s "$disk")
cat "$disk" >/dev/null  # in the page cache, for every run alike
export FERRY_PASSPHRASE=bench
rm -f "$work/bench.key"
"$ferry" --quiet key create --key-file "$work/bench.key" >/dev/null

# One backup of $disk into a new repository; prints "wall_s cpu_s".
run() {
  local kind=$1 repo=$repo_dir/repo-$1 key=()
  rm -rf "$repo"
  if [[ $kind == encrypted ]]; then
    key=(--key-file "$work/bench.key")
    "$ferry" --quiet init --repo "$repo" --encrypt "${key[@]}"
  else
    "$ferry" --quiet init --repo "$repo"
  fi
  "$ferry" --quiet stage --repo "$repo" --point p --vm bench --disk d0 >/dev/null
  sync
  { /usr/bin/time -f "%e %U %S" "$ferry" --quiet backup-disk --repo "$repo" --point p --disk d0 --file "$disk" \
      "${key[@]}" >/dev/null; } 2>&1 | tail -1 | awk '{print $1, $2 + $3}'
}

best_plain="" best_enc="" walls_plain="" walls_enc=""
for ((i = 0; i < runs; i++)); do
  # Alternating which goes first: the one after another's run pays for its writeback.
  order="plain encrypted"
  ((i % 2 == 0)) || order="encrypted plain"
  for kind in $order; do
    read -r wall cpu <<<"$(run $kind)"
    echo "run $i $kind: ${wall}s wall, ${cpu}s cpu" >&2
    if [[ $kind == plain ]]; then walls_plain+=" $wall"; else walls_enc+=" $wall"; fi
    if [[ $kind == plain ]]; then
      if [[ -z $best_plain ]] || awk "BEGIN{exit !($wall < ${best_plain%% *})}"; then best_plain="$wall $cpu"; fi
    else
      if [[ -z $best_enc ]] || awk "BEGIN{exit !($wall < ${best_enc%% *})}"; then best_enc="$wall $cpu"; fi
    fi
  done
done
read -r pw pc <<<"$best_plain"
read -r ew ec <<<"$best_enc"
echo "bytes=$size"
echo "repositories_in=$repo_dir"
echo "plain_wall_s=$pw"
echo "plain_cpu_s=$pc"
echo "plain_mib_per_s=$(awk "BEGIN{printf \"%.0f\", $size / 1048576 / $pw}")"
echo "encrypted_wall_s=$ew"
echo "encrypted_cpu_s=$ec"
echo "encrypted_mib_per_s=$(awk "BEGIN{printf \"%.0f\", $size / 1048576 / $ew}")"
echo "plain_stored_bytes=$(du -sb "$repo_dir/repo-plain/chunks" | cut -f1)"
echo "encrypted_stored_bytes=$(du -sb "$repo_dir/repo-encrypted/chunks" | cut -f1)"
echo "encrypted_vs_plain=$(awk "BEGIN{printf \"%.3f\", $pw / $ew}")"
# Medians too: this machine's run-to-run noise (a shared VM) is larger than the difference.
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
mp=$(median "$walls_plain") me=$(median "$walls_enc")
echo "plain_median_wall_s=$mp"
echo "encrypted_median_wall_s=$me"
echo "encrypted_vs_plain_median=$(awk "BEGIN{printf \"%.3f\", $mp / $me}")"
cleanup
# The compute alone (one thread, no I/O), which the noise above does not blur.
bench_bin=${FERRY_BUILD_DIR:-$root/build}/bench/ferry-bench-chunk-encryption
if [[ -x $bench_bin ]]; then "$bench_bin" "$disk"; fi
