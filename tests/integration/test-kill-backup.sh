#!/usr/bin/env bash
# A backup killed with SIGKILL halfway: no restore point appears, verify is
# clean, the VM keeps running and its guardian removes the job, export, nodes
# and overlay; the next backup works. Then the guardian killed too: the next
# backup's snapshot hunter removes the leftovers.
. "$(dirname "$0")/common.sh" "$@"

make_data_disk "$WORK/d0.qcow2" qcow2 64M
vm_start "$WORK/vm" "virtio0=$WORK/d0.qcow2"
"$FERRY" init --repo "$WORK/repo" --chunk-size 1M
first=$("$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock")
vm_write "$WORK/vm" virtio0 0x5a 10M 2M

start_slow_backup() {
  # A chain of its own: a full read, long enough to be killed halfway.
  "$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" --chain slow --rate-limit 2M >/dev/null 2>>"$WORK/killed.log" &
  backup=$!
  wait_for_export "$WORK/vm"
  sleep 1  # let it read and store some chunks
  kill -0 $backup 2>/dev/null || fail "backup ended before it could be killed"
}

wait_no_objects() {
  local deadline=$((SECONDS + 30))
  while [[ -n $(ferry_objects "$WORK/vm") ]]; do
    ((SECONDS < deadline)) || fail "left in QEMU: $(ferry_objects "$WORK/vm")"
    sleep 0.2
  done
}

# 1. SIGKILL the backup; its guardian cleans up.
start_slow_backup
kill -9 $backup
wait $backup 2>/dev/null || true
wait_no_objects
[[ -z $(ls -A "$FERRY_SCRATCH_DIR") ]] || fail "overlay files left: $(ls "$FERRY_SCRATCH_DIR")"
[[ $(vm_qmp "$WORK/vm" query-status) == *'"running": false'* || $(vm_qmp "$WORK/vm" query-status) == *status* ]] ||
  fail "VM gone"
kill -0 "$(vm_pid "$WORK/vm")" || fail "QEMU died"
[[ $(points "$WORK/repo") == "$first" ]] || fail "a restore point appeared: $(points "$WORK/repo")"
"$FERRY" verify --repo "$WORK/repo" | grep -q '^OK' || fail "verify not clean after the kill"
ok "killed backup: no point, verify clean, VM running, nothing left in QEMU"

second=$("$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock")
snapshot_copy "$WORK/d0.qcow2" "$WORK/now.raw" "$WORK/vm" virtio0
"$FERRY" restore --repo "$WORK/repo" --point "$second" --disk virtio0 --to "$WORK/r.raw"
cmp -s "$WORK/r.raw" "$WORK/now.raw" || fail "backup after the kill restores wrong data"
ok "the next backup works and restores bit-exact"

# 2. Kill the backup and its guardian: leftovers stay until the next backup.
start_slow_backup
guardian=$(pgrep -f "_guardian .*--runtime-dir $FERRY_RUNTIME_DIR" | head -1)
[[ -n $guardian ]] || fail "no guardian process found"
kill -9 "$guardian" $backup
wait $backup 2>/dev/null || true
[[ -n $(ferry_objects "$WORK/vm") ]] || fail "expected leftovers with the guardian killed"
ok "with the guardian killed too, leftovers remain: $(ferry_objects "$WORK/vm")"
third=$("$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" 2>"$WORK/third.log")
grep -q "removed the snapshot left by dead session" "$WORK/third.log" || fail "hunter did not report: $(cat "$WORK/third.log")"
[[ -z $(ferry_objects "$WORK/vm") ]] || fail "left in QEMU after the next backup: $(ferry_objects "$WORK/vm")"
[[ -z $(ls -A "$FERRY_SCRATCH_DIR") ]] || fail "overlay files left: $(ls "$FERRY_SCRATCH_DIR")"
[[ -z $(ls -A "$WORK/repo/staging") ]] || fail "staging left: $(ls "$WORK/repo/staging")"
[[ $(points "$WORK/repo" | wc -l) -eq 3 ]] || fail "expected 3 points"
"$FERRY" verify --repo "$WORK/repo" | grep -q '^OK' || fail "verify not clean"
ok "the next backup removed the dead session's snapshot and staging, and succeeded"
