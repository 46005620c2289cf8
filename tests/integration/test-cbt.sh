#!/usr/bin/env bash
# Changed block tracking (issue 3) against real QEMU: incrementals read only
# what changed and every point restores bit-exact; each fallback trigger gives
# a correct point and says why; interrupted runs; two independent chains.
. "$(dirname "$0")/common.sh" "$@"

MiB=$((1024 * 1024))
CHUNK=$MiB
SIZE0=$((64 * MiB + 512))   # qcow2, with a partial last chunk
SIZE1=$((32 * MiB))         # raw
make_data_disk "$WORK/d0.qcow2" qcow2 $SIZE0
make_data_disk "$WORK/d1.raw" raw $SIZE1
start() { VM_NAME=cbt vm_start "$WORK/vm" "virtio0=$WORK/d0.qcow2" "virtio1=$WORK/d1.raw"; }
start
"$FERRY" init --repo "$WORK/repo" --chunk-size 1M
mkdir -p "$WORK/ref"


# backup [ferry options]: copies both disks as they are (the VM is paused and
# only the test writes, so this is the snapshot's content), backs up, keeps
# the copies as the point's reference. Sets $point.
backup() {
  snapshot_copy "$WORK/d0.qcow2" "$WORK/ref/next-virtio0" "$WORK/vm" virtio0
  snapshot_copy "$WORK/d1.raw" "$WORK/ref/next-virtio1" "$WORK/vm" virtio1
  point=$("$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" "$@" 2>"$WORK/backup.log") ||
    fail "backup failed: $(cat "$WORK/backup.log")"
  mv "$WORK/ref/next-virtio0" "$WORK/ref/$point-virtio0"
  mv "$WORK/ref/next-virtio1" "$WORK/ref/$point-virtio1"
}

# check_point POINT: both disks restore bit-exact to the point's reference.
check_point() {
  local disk
  for disk in virtio0 virtio1; do
    [[ -f $WORK/ref/$1-$disk ]] || continue
    rm -f "$WORK/restored"
    "$FERRY" restore --repo "$WORK/repo" --point "$1" --disk "$disk" --to "$WORK/restored"
    cmp -s "$WORK/restored" "$WORK/ref/$1-$disk" || fail "point $1 disk $disk does not restore bit-exact"
  done
}

expect_mode() {  # POINT DISK MODE [REASON-SUBSTRING]
  local mode reason
  mode=$(field "$1" "$2" cbt.mode) reason=$(field "$1" "$2" cbt.reason)
  [[ $mode == "$3" ]] || fail "point $1 disk $2 is '$mode' ($reason), expected $3"
  [[ -z ${4:-} || $reason == *"$4"* ]] || fail "point $1 disk $2 reason '$reason' lacks '$4'"
  grep -q "disk $2: ${3/full/full read}" "$WORK/backup.log" || fail "the log does not say disk $2 took the $3 path"
}

# --- 1. a full, then 10 rounds of random writes, each followed by a backup.
backup
full=$point
expect_mode $full virtio0 full "first backup"
RANDOM=7
sizes=(512 4096 65536 66048 $MiB $((3 * MiB)) 1536)
points=($full)
for round in $(seq 1 10); do
  declare -A touched=()
  changed=0
  for w in 1 2 3; do
    disk=virtio$((RANDOM % 2)); [[ $disk == virtio0 ]] && size=$SIZE0 || size=$SIZE1
    len=${sizes[RANDOM % ${#sizes[@]}]}
    case $((RANDOM % 4)) in
      0) off=$((size - len)) ;;                                # ends in the last sector
      1) off=$(( (RANDOM % (size / CHUNK)) * CHUNK - 512 )) ;;  # crosses a chunk boundary
      *) off=$(( (RANDOM * 32768 + RANDOM) % (size - len) / 512 * 512 )) ;;
    esac
    ((off >= 0)) || off=0
    vm_write "$WORK/vm" $disk $((RANDOM % 255 + 1)) $off $len
    for ((c = off / CHUNK; c <= (off + len - 1) / CHUNK; c++)); do touched[$disk.$c]=1; done
    changed=$((changed + len))
  done
  backup
  points+=($point)
  read_bytes=$(( $(field $point virtio0 stats.read_bytes) + $(field $point virtio1 stats.read_bytes) ))
  bound=$(( ${#touched[@]} * CHUNK ))
  for d in virtio0 virtio1; do expect_mode $point $d incremental; done
  ((read_bytes <= bound)) || fail "round $round read $read_bytes bytes; changed $changed in ${#touched[@]} chunks (bound $bound)"
  echo "round $round: wrote $changed bytes in ${#touched[@]} chunks, read $read_bytes (bound $bound)"
  unset touched
done
for p in "${points[@]}"; do check_point $p; done
ok "10 incremental rounds: each read at most the touched chunks, all 11 points restore bit-exact"

# --- 2. fallback triggers.
vm_qmp "$WORK/vm" block-dirty-bitmap-remove \
  "{\"node\": \"virtio1-fmt\", \"name\": \"$(field $point virtio1 cbt.bitmap)\"}" >/dev/null
vm_write "$WORK/vm" virtio1 0x41 2M 64k
backup
expect_mode $point virtio1 full "is missing"
expect_mode $point virtio0 incremental
check_point $point
ok "bitmap removed behind our back: full read, reported"

vm_qmp "$WORK/vm" block-dirty-bitmap-disable \
  "{\"node\": \"virtio0-fmt\", \"name\": \"$(field $point virtio0 cbt.bitmap)\"}" >/dev/null
vm_write "$WORK/vm" virtio0 0x42 9M 4k
backup
expect_mode $point virtio0 full "is disabled"
check_point $point
ok "bitmap disabled behind our back: full read, reported"

# The VM restarts cleanly: the raw disk's bitmap is gone, qcow2's persists.
vm_stop "$WORK/vm"; start
vm_write "$WORK/vm" virtio0 0x43 12M 8k
vm_write "$WORK/vm" virtio1 0x43 12M 8k
backup
expect_mode $point virtio1 full "is missing"
expect_mode $point virtio0 incremental
check_point $point
ok "VM restart: raw disk falls back, qcow2's persistent bitmap keeps the chain incremental"

# QEMU killed while a persistent bitmap is in use: it comes back inconsistent.
# (A clean stop stores the bitmap; the next start marks it in use; a kill
# leaves that mark.)
vm_stop "$WORK/vm"; start
vm_write "$WORK/vm" virtio0 0x44 14M 8k
kill -9 "$(vm_pid "$WORK/vm")"; sleep 0.5; vm_stop "$WORK/vm" 2>/dev/null || true; start
vm_write "$WORK/vm" virtio0 0x44 13M 8k
backup
expect_mode $point virtio0 full "inconsistent"
check_point $point
ok "QEMU killed: inconsistent bitmap detected, full read"

vm_qmp "$WORK/vm" block_resize "{\"node-name\": \"virtio1-fmt\", \"size\": $((SIZE1 + 4 * MiB))}" >/dev/null
vm_write "$WORK/vm" virtio1 0x45 $((SIZE1 + MiB)) 64k
backup
expect_mode $point virtio1 full "resized"
check_point $point
ok "disk resized: full read, reported"

# The last point deleted: the bitmap is of another generation than what the
# (now) last point recorded.
vm_write "$WORK/vm" virtio0 0x46 20M 4k
backup
rm -rf "$WORK/repo/points/$point"
vm_write "$WORK/vm" virtio0 0x47 21M 4k
backup
expect_mode $point virtio0 full "another generation"
check_point $point
ok "generation mismatch (a point deleted): full read, reported"

# A fallback reads everything but stores nothing it already has.
[[ $(field $point virtio1 stats.new_chunks) -le 1 ]] || fail "fallback stored chunks the repository had"

# --- 3. interrupted runs.
# SIGTERM: the run fails cleanly and merges the changes back: still incremental.
vm_write "$WORK/vm" virtio1 0x60 0 8M   # enough changed data to read for seconds
"$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" --rate-limit 1M >/dev/null 2>"$WORK/term.log" &
pid=$!
wait_for_export "$WORK/vm"
vm_write "$WORK/vm" virtio0 0x48 30M 64k   # after that run's snapshot
kill -TERM $pid
rc=0; wait $pid || rc=$?
[[ $rc -eq 130 ]] || fail "SIGTERM'd backup exited $rc: $(cat "$WORK/term.log")"
vm_write "$WORK/vm" virtio0 0x49 31M 64k
backup
expect_mode $point virtio0 incremental
expect_mode $point virtio1 incremental
check_point $point
ok "backup stopped by SIGTERM: changes merged back, next run incremental and correct"

# SIGKILL: the bitmap state is in doubt: the next run reads everything.
vm_write "$WORK/vm" virtio1 0x61 0 8M
"$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" --rate-limit 1M >/dev/null 2>>"$WORK/kill.log" &
pid=$!
wait_for_export "$WORK/vm"
vm_write "$WORK/vm" virtio0 0x4a 40M 64k
kill -9 $pid; wait $pid 2>/dev/null || true
vm_write "$WORK/vm" virtio1 0x4b 3M 64k
backup
expect_mode $point virtio0 full "interrupted"
check_point $point
vm_write "$WORK/vm" virtio0 0x4c 41M 64k
backup
expect_mode $point virtio0 incremental
check_point $point
ok "backup killed: next run full and correct, the one after incremental again"

# --- 4. two chains of one VM, interleaved.
backup --chain nightly; a1=$point
backup --chain offsite; b1=$point
vm_write "$WORK/vm" virtio0 0x50 50M 1M
backup --chain nightly; a2=$point
vm_write "$WORK/vm" virtio1 0x51 5M 1M
backup --chain offsite; b2=$point
vm_write "$WORK/vm" virtio0 0x52 51M 4k
backup --chain nightly; a3=$point
for p in $a2 $b2 $a3; do
  for d in virtio0 virtio1; do expect_mode $p $d incremental; done
  check_point $p
done
# offsite's incremental must contain nightly-interval writes too.
[[ $(field $b2 virtio0 stats.read_bytes) -gt 0 ]] || fail "offsite chain missed the write made between its backups"
ok "two chains interleaved: both incremental, both correct"

# --- 5. a disk added to the selection starts its own full.
backup --chain partial --disk virtio0
backup --chain partial
expect_mode $point virtio1 full "first backup of this disk"
expect_mode $point virtio0 incremental
check_point $point
ok "disk added: full for the new disk, incremental for the other"
"$FERRY" list --repo "$WORK/repo" | grep -q "incremental" || fail "list does not show the mode"
"$FERRY" verify --repo "$WORK/repo" | grep -q '^OK' || fail "verify not clean"
