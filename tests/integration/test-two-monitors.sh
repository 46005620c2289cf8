#!/usr/bin/env bash
# Two backups of one VM at once. Through two QMP monitors of the VM they
# share one lock (keyed by the QEMU process, not the socket): the second
# waits for the first and succeeds; neither fails with "is busy" (exit 2).
# With a short lock wait (FERRY_VM_LOCK_WAIT) the second fails with exit 6
# (retryable), naming the VM and the other process. Through the SAME monitor
# (which serves one client at a time) the second waits for the greeting and
# succeeds, or with a short wait fails with exit 6 as well: never a hang.
# Last, a disk held by another tool's block job: "is busy" is exit 6 too.
. "$(dirname "$0")/common.sh" "$@"

make_data_disk "$WORK/d0.qcow2" qcow2 64M
VM_SECOND_QMP=1 VM_NAME=twomon vm_start "$WORK/vm" "virtio0=$WORK/d0.qcow2"
"$FERRY" init --repo "$WORK/repo" --chunk-size 1M
vm_write "$WORK/vm" virtio0 0x5a 10M 2M
snapshot_copy "$WORK/d0.qcow2" "$WORK/now.raw" "$WORK/vm" virtio0

# start_backup SOCKET CHAIN RATE LOG: a full read of a chain of its own in
# the background, sets $bg; returns once its snapshot is exported.
start_backup() {
  "$FERRY" backup --repo "$WORK/repo" --qmp "$1" --chain "$2" --rate-limit "$3" >"$WORK/$4.out" 2>"$WORK/$4.log" &
  bg=$!
  wait_for_export "$WORK/vm"
}
# restores_exact POINT: the point restores to the disk's content.
restores_exact() {
  rm -f "$WORK/r.raw"
  "$FERRY" restore --repo "$WORK/repo" --point "$1" --disk virtio0 --to "$WORK/r.raw" 2>>"$WORK/ferry.log"
  cmp -s "$WORK/r.raw" "$WORK/now.raw" || fail "point $1 restores wrong data"
}
not_busy() { ! grep -q "is busy" "$WORK/$1.log" || fail "$1 hit 'is busy': $(cat "$WORK/$1.log")"; }

# 1. Through the two monitors: the second waits for the first.
start_backup "$WORK/vm/qmp.sock" a 8M a
first=$bg
rc=0
"$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp2.sock" --chain b >"$WORK/b.out" 2>"$WORK/b.log" || rc=$?
((rc == 0)) || fail "the second backup (other monitor) exited $rc: $(cat "$WORK/b.log")"
wait $first || fail "the first backup failed: $(cat "$WORK/a.log")"
grep -q "VM 'twomon' .* is locked by ferry process $first (backup through unix:$WORK/vm/qmp.sock); waiting" \
  "$WORK/b.log" || fail "the second backup did not wait for the first: $(cat "$WORK/b.log")"
not_busy a
not_busy b
restores_exact "$(cat "$WORK/a.out")"
restores_exact "$(cat "$WORK/b.out")"
ok "through two monitors: the second backup waited for the first; both succeeded and restore bit-exact"

# 2. A slow first backup; short waits fail as retryable (exit 6), never 2.
start_backup "$WORK/vm/qmp.sock" c 1M c
first=$bg
FERRY_VM_LOCK_WAIT=1 expect_error 6 "VM 'twomon'" \
  "$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp2.sock" --chain d
FERRY_VM_LOCK_WAIT=1 "$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp2.sock" --chain d 2>"$WORK/d.log" &&
  fail "second backup succeeded while the first held the VM"
grep -q "is busy: ferry process $first (backup through unix:$WORK/vm/qmp.sock) has held its lock for 1 s" \
  "$WORK/d.log" || fail "the lock-wait error does not name the other process: $(cat "$WORK/d.log")"
ok "short lock wait through the other monitor: exit 6, naming the VM and ferry process $first"

# Same monitor: the second client gets no greeting while the first is on.
start=$SECONDS
FERRY_VM_LOCK_WAIT=1 expect_error 6 "ferry process $first (backup through unix:$WORK/vm/qmp.sock) is connected to it" \
  "$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" --chain e
((SECONDS - start < 20)) || fail "waiting for the busy monitor took $((SECONDS - start)) s"
kill -0 $first 2>/dev/null || fail "the slow backup ended too early for this test"
ok "short wait through the same monitor: exit 6 within $((SECONDS - start)) s, naming the monitor's client"
wait $first || fail "the slow backup failed: $(cat "$WORK/c.log")"
not_busy c

# 3. Same monitor, default wait: the second waits for the greeting.
start_backup "$WORK/vm/qmp.sock" f 8M f
first=$bg
"$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" --chain g >"$WORK/g.out" 2>"$WORK/g.log" ||
  fail "the second backup through the same monitor failed: $(cat "$WORK/g.log")"
kill -0 $first 2>/dev/null && fail "the second backup ended while the first still runs"
wait $first || fail "the first backup failed: $(cat "$WORK/f.log")"
restores_exact "$(cat "$WORK/g.out")"
ok "through the same monitor: the second backup waited for the first to leave and succeeded"

[[ -z $(ls -A "$FERRY_SCRATCH_DIR") ]] || fail "overlays left: $(ls "$FERRY_SCRATCH_DIR")"
[[ -z $(ferry_objects "$WORK/vm") ]] || fail "left in QEMU: $(ferry_objects "$WORK/vm")"
"$FERRY" verify --repo "$WORK/repo" | grep -q '^OK' || fail "verify not clean"
ok "nothing left; verify clean"

# 4. Another tool's block job holds the disk: QEMU says "is busy", which is
# retryable (exit 6), not bad input, and the failed snapshot leaves nothing.
vm_qmp "$WORK/vm" blockdev-add '{"driver": "null-co", "node-name": "harness-target", "size": 67108864}' >/dev/null
vm_qmp "$WORK/vm" blockdev-backup '{"job-id": "harness", "device": "virtio0-fmt", "target": "harness-target",
  "sync": "full", "speed": 1}' >/dev/null
expect_error 6 "is busy" "$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" --chain h
vm_qmp "$WORK/vm" block-job-cancel '{"device": "harness", "force": true}' >/dev/null
for _ in $(seq 50); do [[ $(vm_qmp "$WORK/vm" query-block-jobs) == "[]" ]] && break; sleep 0.1; done
vm_qmp "$WORK/vm" blockdev-del '{"node-name": "harness-target"}' >/dev/null
[[ -z $(ls -A "$FERRY_SCRATCH_DIR") ]] || fail "overlays left after the refused snapshot: $(ls "$FERRY_SCRATCH_DIR")"
[[ -z $(ferry_objects "$WORK/vm") ]] || fail "left in QEMU after the refused snapshot: $(ferry_objects "$WORK/vm")"
ok "a disk busy with another tool's job: exit 6, nothing left"
