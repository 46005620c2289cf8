#!/usr/bin/env bash
# Measure the compute floor of a backup: what reading, compressing and hashing the
# allocated data costs on this machine (see /work/shared/lab.md, "Baselines").
# Usage: bench/compute-floor.sh DATA_FILE [REFERENCE.qcow2]
#   DATA_FILE: the allocated data as one raw file (bench/reference-allocated.sh).
#   REFERENCE.qcow2: if given, also time nbdcopy from a read-only qemu-nbd of it.
# Prints key=value lines on stdout (seconds are wall clock, best of FLOOR_RUNS=3):
#   allocated_bytes   size of DATA_FILE
#   nbd_read_s        nbdcopy nbd+unix://(qemu-nbd -r -f qcow2 REFERENCE) null:
#   zstd_s            zstd -1 -T2 -c DATA_FILE > /dev/null
#   zstd_cpu_s        user+sys CPU seconds of that best zstd run
#   zstd_bytes        compressed size (one more, untimed run)
#   sha256_s          openssl dgst -sha256 DATA_FILE
#   floor_s           zstd_s + sha256_s / 2   (2 cores: hashing shares them)
# The page cache is warmed first (cat FILE > /dev/null). Progress goes to stderr.
set -euo pipefail

if (($# < 1 || $# > 2)) || [[ $1 == -h || $1 == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
fi
data=$1
ref=${2:-}
runs=${FLOOR_RUNS:-3}
[[ -f $data ]] || {
    echo "compute-floor: no such file: $data" >&2
    exit 1
}
[[ -z $ref || -f $ref ]] || {
    echo "compute-floor: no such image: $ref" >&2
    exit 1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-floor.XXXXXX")
nbd_pid=
cleanup() {
    if [[ -n $nbd_pid ]]; then
        kill "$nbd_pid" 2>/dev/null || true
        wait "$nbd_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# timed CMD...: runs CMD (its stdout discarded), sets t_real and t_cpu (seconds).
timed() {
    local TIMEFORMAT='%R %U %S' out
    out=$({ time "$@" >/dev/null; } 2>&1) || {
        echo "compute-floor: failed: $* : $out" >&2
        return 1
    }
    out=${out##*$'\n'}
    read -r t_real u s <<<"$out"
    t_cpu=$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.3f", u + s }')
}
# best NAME CMD...: best-of-$runs wall time of CMD into best_real / best_cpu.
best() {
    local name=$1 i
    shift
    best_real='' best_cpu=''
    for ((i = 1; i <= runs; i++)); do
        timed "$@"
        echo "compute-floor: $name run $i: ${t_real}s (cpu ${t_cpu}s)" >&2
        if [[ -z $best_real ]] || awk -v a="$t_real" -v b="$best_real" 'BEGIN { exit !(a < b) }'; then
            best_real=$t_real best_cpu=$t_cpu
        fi
    done
}

allocated=$(stat -L -c %s "$data")
echo "compute-floor: warming the page cache" >&2
cat "$data" >/dev/null
if [[ -n $ref ]]; then cat "$ref" >/dev/null; fi

echo "allocated_bytes=$allocated"

if [[ -n $ref ]]; then
    sock=$work/nbd.sock
    qemu-nbd -r -f qcow2 -t --socket "$sock" "$ref" </dev/null >"$work/qemu-nbd.log" 2>&1 &
    nbd_pid=$!
    for ((i = 0; i < 100; i++)); do
        [[ -S $sock ]] && break
        kill -0 "$nbd_pid" 2>/dev/null || break
        sleep 0.05
    done
    [[ -S $sock ]] || {
        echo "compute-floor: qemu-nbd did not start:" >&2
        cat "$work/qemu-nbd.log" >&2
        exit 1
    }
    best nbd_read nbdcopy "nbd+unix:///?socket=$sock" null:
    echo "nbd_read_s=$best_real"
    kill "$nbd_pid" 2>/dev/null || true
    wait "$nbd_pid" 2>/dev/null || true
    nbd_pid=
fi

best zstd zstd -q -1 -T2 -c "$data"
zstd_s=$best_real
echo "zstd_s=$zstd_s"
echo "zstd_cpu_s=$best_cpu"
echo "zstd_bytes=$(zstd -q -1 -T2 -c "$data" | wc -c)"

best sha256 openssl dgst -sha256 "$data"
sha256_s=$best_real
echo "sha256_s=$sha256_s"

awk -v z="$zstd_s" -v h="$sha256_s" 'BEGIN { printf "floor_s=%.3f\n", z + h / 2 }'
