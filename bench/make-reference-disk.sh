#!/usr/bin/env bash
# Build the benchmark reference disk (see /work/shared/lab.md, "Baselines").
# Usage: bench/make-reference-disk.sh [--force] OUT.qcow2
#
# OUT.qcow2: 4 GiB virtual, exactly 2 GiB allocated:
#   [0, 1G)     concatenated system files: /usr/bin, /usr/sbin, /usr/libexec,
#               /usr/lib/x86_64-linux-gnu, then the rest of /usr/lib (each sorted by
#               path; the set repeated if short), truncated to exactly 1 GiB
#   [1G, 1.5G)  random (openssl rand)
#   [1.5G, 2G)  copy of [0, 0.5G)  (duplicate data at a 512 MiB-aligned offset)
#   [2G, 4G)    hole
# Built as a 2 GiB raw temp file beside OUT, `qemu-img convert -S 0 -O qcow2` (every
# cluster allocated, even zero runs inside binaries), then `qemu-img resize` to 4 GiB.
# Idempotent: if OUT and OUT.stamp exist and agree, nothing is done (--force rebuilds).
# Prints a summary (allocated bytes, time) on stderr. Needs ~4 GiB free beside OUT
# (2 GiB temporarily).
set -euo pipefail

force=0
if [[ ${1:-} == --force ]]; then
    force=1
    shift
fi
if (($# != 1)); then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
fi
out=$1
stamp=$out.stamp
GiB=$((1024 * 1024 * 1024))
MiB=$((1024 * 1024))
layout="ferry-reference-disk v1: 4G virtual; bins 0-1G; random 1G-1.5G; copy of 0-0.5G at 1.5G-2G"

# describe FILE: the stamp line proving FILE is the image we built.
describe() {
    printf '%s; size=%s; mtime=%s\n' "$layout" "$(stat -c %s "$1")" "$(stat -c %Y "$1")"
}

if ((!force)) && [[ -f $out && -f $stamp ]] && [[ $(describe "$out") == "$(cat "$stamp")" ]] &&
    qemu-img check -q -f qcow2 "$out" >/dev/null 2>&1; then
    echo "make-reference-disk: $out is up to date (stamp $stamp)" >&2
    exit 0
fi

mkdir -p "$(dirname "$out")"
rm -f "$stamp"
t0=$(date +%s.%N)
raw=$(mktemp "$out.raw.XXXXXX")
tmpq=$(mktemp "$out.tmp.XXXXXX")
trap 'rm -f "$raw" "$tmpq"' EXIT

# 1 GiB of binaries. The generator repeats the file set until dd has taken exactly
# 1 GiB and closed the pipe (hence no pipefail here).
binaries() {
    local d
    local -a roots=()
    for d in /usr/bin /usr/sbin /usr/libexec /usr/lib/x86_64-linux-gnu /usr/lib; do
        [[ -d $d ]] && roots+=("$d")
    done
    while :; do
        for d in "${roots[@]}"; do
            # Each root sorted on its own; /usr/lib last, without what came before.
            find "$d" -xdev \( -path /usr/lib/x86_64-linux-gnu -a ! -path "$d" -prune \) \
                -o -type f -size +0 -print0 2>/dev/null | LC_ALL=C sort -z | xargs -0 cat 2>/dev/null
            # xargs says 125 when cat died of a signal: SIGPIPE, dd has all it wants.
            [[ ${PIPESTATUS[2]} -eq 125 ]] && return 0
        done
    done
}
(
    set +o pipefail
    binaries | dd of="$raw" bs=1M count=1024 iflag=fullblock conv=notrunc status=none
)
# 0.5 GiB random at 1 GiB.
(
    set +o pipefail
    openssl rand $((512 * MiB)) |
        dd of="$raw" bs=1M seek=1024 count=512 iflag=fullblock conv=notrunc status=none
)
# Copy of the first 0.5 GiB at 1.5 GiB.
dd if="$raw" of="$raw" bs=1M skip=0 seek=1536 count=512 conv=notrunc status=none
if [[ $(stat -c %s "$raw") -ne $((2 * GiB)) ]] ||
    ! cmp -s -n $((512 * MiB)) "$raw" <(tail -c +$((1536 * MiB + 1)) "$raw"); then
    echo "make-reference-disk: building the raw image failed" >&2
    exit 1
fi

# -S 0 allocates every cluster of the 2 GiB (zero runs in binaries included); the
# growth to 4 GiB is then a hole.
qemu-img convert -S 0 -f raw -O qcow2 "$raw" "$tmpq"
rm -f "$raw"
qemu-img resize -q -f qcow2 "$tmpq" $((4 * GiB))

allocated=$(qemu-img map --output=json -f qcow2 "$tmpq" | python3 -c '
import json, sys
print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))')
vsize=$(qemu-img info --output=json -f qcow2 "$tmpq" | python3 -c '
import json, sys; print(json.load(sys.stdin)["virtual-size"])')
if ((allocated != 2 * GiB || vsize != 4 * GiB)); then
    echo "make-reference-disk: unexpected image: virtual $vsize, allocated $allocated" >&2
    exit 1
fi
chmod 0644 "$tmpq"
mv -f "$tmpq" "$out"
describe "$out" >"$stamp"
t1=$(date +%s.%N)
awk -v a="$allocated" -v v="$vsize" -v f="$(stat -c %s "$out")" -v t0="$t0" -v t1="$t1" -v o="$out" 'BEGIN {
    printf "make-reference-disk: built %s: virtual %s, allocated %s, file %s bytes, in %.1f s\n",
        o, v, a, f, t1 - t0 > "/dev/stderr" }'
