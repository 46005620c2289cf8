#!/usr/bin/env bash
# libvirt benchmark (issue 4): Ferry against virtnbdbackup (Debian package),
# side by side in one run, on two identical running libvirt domains whose disk
# is a copy of the reference disk (bench/make-reference-disk.sh). Each tool
# gets its own domain so their checkpoints never meet.
#   full:        virtnbdbackup -l full --compress   vs   ferry backup --libvirt
#   incremental: after 1% of the disk (41 MiB) rewritten at random through
#                each domain identically: virtnbdbackup -l inc vs ferry backup
# Usage: bench/libvirt-backup.sh [WORKDIR]   (default /var/tmp/ferry-bench)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ferry=${FERRY:-${FERRY_BUILD_DIR:-$root/build}/bin/ferry}
work=${1:-/var/tmp/ferry-bench}
# The peer is a Debian package; only this benchmark needs it.
command -v virtnbdbackup >/dev/null ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends virtnbdbackup >&2
mkdir -p "$work"
chmod 755 "$work"
export FERRY_RUNTIME_DIR=$work/run FERRY_SCRATCH_DIR=$work/scratch
# shellcheck source=../tests/lib/libvirt.sh
. "$root/tests/lib/libvirt.sh"
trap lv_cleanup_all EXIT
lv_ensure_daemons
MiB=$((1024 * 1024))

"$root/bench/make-reference-disk.sh" "$work/ref.qcow2" >&2
for t in vnb ferry; do
  cp "$work/ref.qcow2" "$work/lv-$t.qcow2"
  lv_virsh destroy bench-$t >/dev/null 2>&1 || true
  lv_virsh undefine --checkpoints-metadata bench-$t >/dev/null 2>&1 || true
  lv_define bench-$t "vda=$work/lv-$t.qcow2"
done
cat "$work/lv-vnb.qcow2" "$work/lv-ferry.qcow2" >/dev/null

elapsed() { local t0=$1; awk "BEGIN{print $(date +%s.%N) - $t0}"; }
# Before each timed run: flush what the previous one wrote, so its writeback
# does not compete with the next tool.
settle() { sync; sleep 1; }

rm -rf "$work/vnb" "$work/repo"
settle
t0=$(date +%s.%N)
virtnbdbackup -d bench-vnb -l full -o "$work/vnb" --compress --noprogress >"$work/vnb-full.log" 2>&1
vnb_full=$(elapsed $t0)
vnb_bytes=$(du -sb "$work/vnb" | cut -f1)

"$ferry" --quiet init --repo "$work/repo"
settle
t0=$(date +%s.%N)
"$ferry" --quiet backup --repo "$work/repo" --libvirt "$LV_URI" --vm bench-ferry >/dev/null
ferry_full=$(elapsed $t0)
ferry_bytes=$(du -sb "$work/repo/chunks" | cut -f1)

RANDOM=42
for ((written = 0; written < 4096 * MiB / 100; written += MiB)); do
  off=$(( ((RANDOM << 15 | RANDOM) % ((4096 * MiB - MiB) / 4096)) * 4096 ))
  pat=$((RANDOM % 255 + 1))
  lv_write bench-vnb vda $pat $off $MiB
  lv_write bench-ferry vda $pat $off $MiB
done

settle
t0=$(date +%s.%N)
virtnbdbackup -d bench-vnb -l inc -o "$work/vnb" --compress --noprogress >"$work/vnb-inc.log" 2>&1
vnb_inc=$(elapsed $t0)
settle
t0=$(date +%s.%N)
"$ferry" --quiet backup --repo "$work/repo" --libvirt "$LV_URI" --vm bench-ferry >/dev/null
ferry_inc=$(elapsed $t0)

echo "virtnbdbackup_full_s=$vnb_full"
echo "virtnbdbackup_full_bytes=$vnb_bytes"
echo "ferry_full_s=$ferry_full"
echo "ferry_full_bytes=$ferry_bytes"
echo "full_time_ratio=$(awk "BEGIN{printf \"%.2f\", $ferry_full / $vnb_full}")"
echo "full_bytes_ratio=$(awk "BEGIN{printf \"%.2f\", $ferry_bytes / $vnb_bytes}")"
echo "virtnbdbackup_inc_s=$vnb_inc"
echo "ferry_inc_s=$ferry_inc"
echo "inc_time_ratio=$(awk "BEGIN{printf \"%.2f\", $ferry_inc / $vnb_inc}")"
