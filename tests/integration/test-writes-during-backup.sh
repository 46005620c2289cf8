#!/usr/bin/env bash
# Guest writes made through the device while the backup runs are not in that
# restore point (it is the disk as it was when the snapshot was taken); the
# source disk does have them.
. "$(dirname "$0")/common.sh" "$@"

make_data_disk "$WORK/d0.qcow2" qcow2 64M
make_data_disk "$WORK/d1.raw" raw 32M
vm_start "$WORK/vm" "virtio0=$WORK/d0.qcow2" "virtio1=$WORK/d1.raw"
snapshot_copy "$WORK/d0.qcow2" "$WORK/before0.raw"
snapshot_copy "$WORK/d1.raw" "$WORK/before1.raw"

"$FERRY" init --repo "$WORK/repo" --chunk-size 1M
# Slow enough (about 4 s) that the writes below land while it reads.
"$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" --rate-limit 4M \
  >"$WORK/point" 2>"$WORK/backup.log" &
backup=$!
wait_for_export "$WORK/vm"
# Early, middle and last sector; some cross chunk boundaries.
vm_write "$WORK/vm" virtio0 0xcd 0 64k
vm_write "$WORK/vm" virtio0 0xcd $((33 * 1024 * 1024 - 4096)) 8k
vm_write "$WORK/vm" virtio0 0xcd $((64 * 1024 * 1024 - 512)) 512
vm_write "$WORK/vm" virtio1 0xcd $((20 * 1024 * 1024)) 3M
kill -0 $backup 2>/dev/null || fail "backup finished before the writes; the test proves nothing"
wait $backup || fail "backup failed: $(cat "$WORK/backup.log")"
point=$(cat "$WORK/point")
ok "backup $point ran while the guest wrote"

"$FERRY" restore --repo "$WORK/repo" --point "$point" --disk virtio0 --to "$WORK/r0.raw"
"$FERRY" restore --repo "$WORK/repo" --point "$point" --disk virtio1 --to "$WORK/r1.raw"
cmp -s "$WORK/r0.raw" "$WORK/before0.raw" || fail "virtio0 restore is not the disk as it was at the snapshot"
cmp -s "$WORK/r1.raw" "$WORK/before1.raw" || fail "virtio1 restore is not the disk as it was at the snapshot"
ok "the restore point holds the disks as they were at the snapshot"

vm_read_check "$WORK/vm" virtio0 0xcd $((64 * 1024 * 1024 - 512)) 512 || fail "source lacks the write"
vm_read_check "$WORK/vm" virtio1 0xcd $((20 * 1024 * 1024)) 3M || fail "source lacks the write"
snapshot_copy "$WORK/d1.raw" "$WORK/after1.raw"
cmp -s "$WORK/after1.raw" "$WORK/before1.raw" && fail "source unchanged?"
ok "the source disks have the writes"
