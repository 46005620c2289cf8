#!/usr/bin/env bash
# Restore benchmark (issue 10, item 7), side by side in one run on this machine:
#   - the floor: dd bs=4M conv=fsync of the reference disk's 2 GiB of allocated data
#     (and, for reference, the same with oflag=direct)
#   - ferry restore --format raw and --format qcow2 of a full backup of that disk
#     (taken from a running QEMU VM, as bench/full-backup.sh does)
#   - restic restore of the same disk (as a raw file) from a local restic repo
#   - optionally a second ferry binary (FERRY_BEFORE=path), for before/after rows
# Every timing runs until the output is durable: the command, then `sync`, inside
# the timer. Page cache: warm for inputs (chunks, restic repo, dd source are read
# with cat before each timing), outputs deleted and synced before each timing.
# Every ferry restore is checked bit-exact against the source (qemu-img compare)
# and thin (raw: du; qcow2: allocated bytes from qemu-img map), once per variant.
# CPU seconds (user + sys of the command and its children, qemu-nbd included)
# are printed beside the wall clock: on a shared machine they move less.
# Usage: bench/restore.sh [WORKDIR]   (default /var/tmp/ferry-bench-restore)
# Env: BENCH_RUNS (default 2, best of), FERRY (binary), FERRY_BEFORE (binary),
#      BENCH_THREADS (ferry restore --threads; default: ferry's own).
# Needs a built tree (scripts/build), restic (apt-get install -y restic). Prints a
# table and key=value lines, the ratios against the targets included.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ferry=${FERRY:-${FERRY_BUILD_DIR:-$root/build}/bin/ferry}
ferry_before=${FERRY_BEFORE:-}
work=${1:-/var/tmp/ferry-bench-restore}
runs=${BENCH_RUNS:-2}
threads_arg=()
[[ -n ${BENCH_THREADS:-} ]] && threads_arg=(--threads "$BENCH_THREADS")
command -v restic >/dev/null || {
    echo "restore.sh: restic is missing (apt-get install -y restic)" >&2
    exit 1
}
mkdir -p "$work"
work=$(cd "$work" && pwd)
export FERRY_RUNTIME_DIR=$work/run FERRY_SCRATCH_DIR=$work/scratch
# shellcheck source=../tests/lib/vm.sh
. "$root/tests/lib/vm.sh"
cleanup() {
    vm_cleanup_all
    rm -rf "$work/out"
}
trap cleanup EXIT

"$root/bench/make-reference-disk.sh" "$work/ref.qcow2" >&2
[[ -f $work/allocated.raw ]] || "$root/bench/reference-allocated.sh" "$work/ref.qcow2" -o "$work/allocated.raw" >&2
# The source as a (sparse) raw file: restic's input and the comparison base.
[[ -f $work/src.raw && $work/src.raw -nt $work/ref.qcow2 ]] ||
    qemu-img convert -U -f qcow2 -O raw "$work/ref.qcow2" "$work/src.raw"
allocated=$(stat -c %s "$work/allocated.raw")

echo "== ferry backup of a running VM" >&2
VM_NAME=bench vm_start "$work/vm" "virtio0=$work/ref.qcow2"
variants=(new)
[[ -n $ferry_before ]] && variants=(before new)
declare -A bin=([new]=$ferry [before]=$ferry_before) point
# Each binary backs up into a repository of its own format (an older Ferry
# does not open a newer repository).
for v in "${variants[@]}"; do
    rm -rf "$work/repo-$v"
    "${bin[$v]}" --quiet init --repo "$work/repo-$v"
    point[$v]=$("${bin[$v]}" --quiet backup --repo "$work/repo-$v" --qmp "$work/vm/qmp.sock")
done
vm_stop "$work/vm"

echo "== restic backup of the raw disk" >&2
export RESTIC_PASSWORD=ferry-bench RESTIC_REPOSITORY=$work/restic-repo
rm -rf "$RESTIC_REPOSITORY"
restic init --repository-version 2 -q
(cd "$work" && restic backup -q --compression auto src.raw)

warm() { cat "$@" >/dev/null 2>&1 || true; }
warm_ferry() { find "$work/repo-$1" -type f -print0 | xargs -0 cat >/dev/null; }
# timed NAME CMD...: wall seconds of CMD + sync into t_NAME, and CMD's CPU
# seconds (user + sys, children included) into c_NAME, from the best run so far.
timed() {
    local name=$1 t0 t1 s cpu
    shift
    sync
    t0=$(date +%s.%N)
    /usr/bin/time -o "$work/time.out" -f "%U %S" "$@"
    sync
    t1=$(date +%s.%N)
    s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b - a}')
    cpu=$(awk '{printf "%.2f", $1 + $2}' "$work/time.out")
    echo "  $name: $s s ($cpu s CPU)" >&2
    local var=t_$name cvar=c_$name
    if [[ -z ${!var:-} ]] || awk -v a="$s" -v b="${!var}" 'BEGIN{exit !(a < b)}'; then
        printf -v "$var" %s "$s"
        printf -v "$cvar" %s "$cpu"
    fi
}
check_raw() {  # check_raw FILE: bit-exact and thin
    qemu-img compare -q -U -f raw -F raw "$work/src.raw" "$1" ||
        { echo "restore.sh: $1 differs from the source" >&2; exit 1; }
    local kib
    kib=$(du -k "$1" | cut -f1)
    ((kib * 1024 <= allocated + 4 * 1024 * 1024)) ||
        { echo "restore.sh: $1 is not thin: ${kib} KiB allocated" >&2; exit 1; }
    echo "$((kib * 1024))"
}
check_qcow2() {  # check_qcow2 FILE: bit-exact and thin
    qemu-img compare -q -U -f qcow2 -F raw "$1" "$work/src.raw" ||
        { echo "restore.sh: $1 differs from the source" >&2; exit 1; }
    local a
    a=$(qemu-img map -U --output=json -f qcow2 "$1" | python3 -c '
import json, sys
print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))')
    ((a <= allocated)) || { echo "restore.sh: $1 is not thin: $a bytes allocated" >&2; exit 1; }
    echo "$a"
}

declare -A thin_raw thin_qcow2
mkdir -p "$work/out"
for ((i = 1; i <= runs; i++)); do
    echo "== run $i of $runs" >&2
    rm -rf "$work/out"/*
    warm "$work/allocated.raw"
    timed dd dd if="$work/allocated.raw" of="$work/out/dd.raw" bs=4M conv=fsync status=none
    rm -f "$work/out/dd.raw"
    timed dd_direct dd if="$work/allocated.raw" of="$work/out/dd.raw" bs=4M oflag=direct conv=fsync status=none
    rm -f "$work/out/dd.raw"
    for v in "${variants[@]}"; do
        for fmt in raw qcow2; do
            warm_ferry "$v"
            timed "ferry_${v}_$fmt" "${bin[$v]}" --quiet restore --repo "$work/repo-$v" --point "${point[$v]}" \
                --disk virtio0 --to "$work/out/$v.$fmt" --format "$fmt" "${threads_arg[@]}"
            if ((i == 1)); then
                if [[ $fmt == raw ]]; then
                    thin_raw[$v]=$(check_raw "$work/out/$v.$fmt")
                else
                    thin_qcow2[$v]=$(check_qcow2 "$work/out/$v.$fmt")
                fi
            fi
            rm -f "$work/out/$v.$fmt"
        done
    done
    find "$RESTIC_REPOSITORY" -type f -print0 | xargs -0 cat >/dev/null
    timed restic restic restore -q latest --target "$work/out/restic"
    rm -rf "$work/out/restic"
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a / b}'; }
raw_dd=$(ratio "$t_ferry_new_raw" "$t_dd")
raw_restic=$(ratio "$t_ferry_new_raw" "$t_restic")
qcow2_raw=$(ratio "$t_ferry_new_qcow2" "$t_ferry_new_raw")
met() { awk -v a="$1" -v b="$2" 'BEGIN{print (a <= b) ? "met" : "NOT met"}'; }

{
    echo
    echo "| measure (best of $runs, until durable) | wall s | CPU s |"
    echo "|---|---|---|"
    echo "| dd bs=4M conv=fsync, 2 GiB allocated data | $t_dd | $c_dd |"
    echo "| dd bs=4M oflag=direct conv=fsync (reference) | $t_dd_direct | $c_dd_direct |"
    if [[ -n $ferry_before ]]; then
        echo "| ferry restore --format raw (before) | $t_ferry_before_raw | $c_ferry_before_raw |"
        echo "| ferry restore --format qcow2 (before) | $t_ferry_before_qcow2 | $c_ferry_before_qcow2 |"
    fi
    echo "| ferry restore --format raw | $t_ferry_new_raw | $c_ferry_new_raw |"
    echo "| ferry restore --format qcow2 | $t_ferry_new_qcow2 | $c_ferry_new_qcow2 |"
    echo "| restic restore + sync | $t_restic | $c_restic |"
    echo
    echo "raw / dd = $raw_dd (target <= 1.3: $(met "$raw_dd" 1.3))"
    echo "raw / restic = $raw_restic (target <= 0.5: $(met "$raw_restic" 0.5))"
    echo "qcow2 / raw = $qcow2_raw (target <= 1.2: $(met "$qcow2_raw" 1.2))"
    echo
} >&2
echo "allocated_bytes=$allocated"
echo "dd_s=$t_dd"
echo "dd_direct_s=$t_dd_direct"
if [[ -n $ferry_before ]]; then
    echo "ferry_before_raw_s=$t_ferry_before_raw"
    echo "ferry_before_qcow2_s=$t_ferry_before_qcow2"
    echo "ferry_before_raw_cpu_s=$c_ferry_before_raw"
    echo "ferry_before_qcow2_cpu_s=$c_ferry_before_qcow2"
    echo "ferry_before_raw_allocated_bytes=${thin_raw[before]}"
    echo "ferry_before_qcow2_allocated_bytes=${thin_qcow2[before]}"
fi
echo "ferry_raw_s=$t_ferry_new_raw"
echo "ferry_qcow2_s=$t_ferry_new_qcow2"
echo "ferry_raw_cpu_s=$c_ferry_new_raw"
echo "ferry_qcow2_cpu_s=$c_ferry_new_qcow2"
echo "ferry_raw_allocated_bytes=${thin_raw[new]}"
echo "ferry_qcow2_allocated_bytes=${thin_qcow2[new]}"
echo "restic_s=$t_restic"
echo "restic_cpu_s=$c_restic"
echo "ferry_raw_vs_dd=$raw_dd"
echo "ferry_raw_vs_restic=$raw_restic"
echo "ferry_qcow2_vs_raw=$qcow2_raw"
echo "bit_exact=yes"
