#!/usr/bin/env bash
# A backup killed with SIGKILL together with its guardian AND its QEMU: the
# restarted VM's QEMU knows nothing of the dead session, yet the next backup
# on this host removes its overlay, lock, NBD socket and NBD-server marker,
# and succeeds and restores bit-exact. Meanwhile a live backup of another VM
# keeps every file, and a dead session of another VM whose QEMU still runs is
# left for that VM's next backup (which then removes it through QMP). Last,
# with only the backup and QEMU killed, the guardian removes the files itself,
# also when the VM was restarted before it ran (leaving the new QEMU alone).
. "$(dirname "$0")/common.sh" "$@"

make_data_disk "$WORK/d0.qcow2" qcow2 64M
make_data_disk "$WORK/e0.qcow2" qcow2 64M 2
vm_start "$WORK/vm" "virtio0=$WORK/d0.qcow2"
VM_NAME=other vm_start "$WORK/vm2" "virtio0=$WORK/e0.qcow2"
"$FERRY" init --repo "$WORK/repo" --chunk-size 1M
"$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" >/dev/null 2>>"$WORK/ferry.log"
vm_write "$WORK/vm" virtio0 0x5a 10M 2M

# session_of BACKUP_PID: the session id of a running backup (its lock's
# record names the backup's pid).
session_of() {
  local lock
  for lock in "$FERRY_RUNTIME_DIR"/????????.lock; do
    grep -qx "pid $1" "$lock" 2>/dev/null && { basename "$lock" .lock; return; }
  done
  fail "no session lock of backup $1 in $FERRY_RUNTIME_DIR: $(ls "$FERRY_RUNTIME_DIR")"
}
# files_of SESSION: every file of that session in the runtime and scratch dirs.
files_of() { (cd "$WORK" && ls -d run/"$1".* scratch/ferry-"$1"-* 2>/dev/null | sort | tr '\n' ' '); }
# guardian_of BACKUP_PID: the guardian the backup forked.
guardian_of() {
  local g
  g=$(pgrep -P "$1" -f "_guardian " | head -1)
  [[ -n $g ]] || fail "backup $1 has no guardian"
  echo "$g"
}
kill_and_reap() {
  local p
  kill -9 "$@" 2>/dev/null || true
  for p in "$@"; do
    wait "$p" 2>/dev/null || true  # our children (backups, QEMU)
    while [[ -d /proc/$p && $(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$p/stat" 2>/dev/null) != Z ]]; do
      sleep 0.05
    done
  done
}

# 1. vm2: a dead session whose QEMU still runs (backup and guardian killed);
# vm3: a live, slow backup that runs while vm's next backup hunts. Both
# before vm's session dies: every backup's hunter would remove its files.
"$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm2/qmp.sock" --chain other-dead --rate-limit 2M \
  >/dev/null 2>>"$WORK/killed.log" &
backup=$!
wait_for_export "$WORK/vm2"
sleep 0.5
dead2=$(session_of $backup)
kill_and_reap "$(guardian_of $backup)" "$backup"
dead2_files=$(files_of "$dead2")
[[ -n $(ferry_objects "$WORK/vm2") ]] || fail "vm2's killed backup left nothing in its QEMU"
make_data_disk "$WORK/f0.qcow2" qcow2 64M 3
VM_NAME=third vm_start "$WORK/vm3" "virtio0=$WORK/f0.qcow2"
"$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm3/qmp.sock" --chain live --rate-limit 1M \
  >/dev/null 2>"$WORK/live.log" &
live=$!
wait_for_export "$WORK/vm3"
live_session=$(session_of $live)
live_files=$(files_of "$live_session")

# 2. Kill a backup of vm, its guardian and its QEMU at once.
"$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" --chain slow --rate-limit 2M \
  >/dev/null 2>>"$WORK/killed.log" &
backup=$!
wait_for_export "$WORK/vm"
sleep 1
session=$(session_of $backup)
guardian=$(guardian_of $backup)
qemu=$(vm_pid "$WORK/vm")
kill_and_reap "$guardian" "$backup" "$qemu"
vm_stop "$WORK/vm"  # forget the dead QEMU
left=$(files_of "$session")
for f in "run/$session.lock" "run/$session.nbd" "run/$session.nbd-server" "scratch/ferry-$session-0.qcow2"; do
  [[ " $left " == *" $f "* ]] || fail "expected $f among the leftovers of dead session $session: $left"
done
ok "backup, guardian and QEMU killed: session $session left $left"

# 3. Restart vm on the same disk; its next backup cleans up the dead session.
vm_start "$WORK/vm" "virtio0=$WORK/d0.qcow2"
point=$("$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" 2>"$WORK/next.log") ||
  fail "backup after the kill failed: $(cat "$WORK/next.log")"
[[ -z $(files_of "$session") ]] || fail "left of dead session $session: $(files_of "$session")"
grep -q "session $session: removed .*$session.lock" "$WORK/next.log" ||
  fail "the removal of session $session was not logged: $(cat "$WORK/next.log")"
[[ $(files_of "$live_session") == "$live_files" ]] ||
  fail "files of the live session $live_session changed: '$live_files' -> '$(files_of "$live_session")'"
[[ $(files_of "$dead2") == "$dead2_files" ]] ||
  fail "files of vm2's dead session $dead2 (its QEMU runs) changed: '$dead2_files' -> '$(files_of "$dead2")'"
grep -q "dead ferry session $dead2 belongs to another running VM" "$WORK/next.log" ||
  fail "not logged why session $dead2 was left: $(cat "$WORK/next.log")"
sed 's/^/  | /' "$WORK/next.log"
ok "next backup removed $session's files; the live $live_session and vm2's $dead2 kept theirs"

snapshot_copy "$WORK/d0.qcow2" "$WORK/now.raw" "$WORK/vm" virtio0
"$FERRY" restore --repo "$WORK/repo" --point "$point" --disk virtio0 --to "$WORK/r.raw" 2>>"$WORK/ferry.log"
cmp -s "$WORK/r.raw" "$WORK/now.raw" || fail "the backup after the restart restores wrong data"
ok "the backup after the restart restores bit-exact"

wait $live || fail "the live backup of vm3 failed: $(cat "$WORK/live.log")"
[[ -z $(files_of "$live_session") ]] || fail "the live session left files: $(files_of "$live_session")"
ok "the other VM's live backup, running during the hunt, succeeded"

"$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm2/qmp.sock" --chain other >/dev/null 2>"$WORK/vm2-next.log" ||
  fail "vm2's backup failed: $(cat "$WORK/vm2-next.log")"
grep -q "removed the snapshot left by dead session $dead2" "$WORK/vm2-next.log" ||
  fail "vm2's next backup did not report session $dead2: $(cat "$WORK/vm2-next.log")"
[[ -z $(files_of "$dead2") ]] || fail "vm2's next backup left $(files_of "$dead2")"
[[ -z $(ferry_objects "$WORK/vm2") ]] || fail "left in vm2's QEMU: $(ferry_objects "$WORK/vm2")"
[[ -z $(ls -A "$FERRY_SCRATCH_DIR") ]] || fail "overlays left: $(ls "$FERRY_SCRATCH_DIR")"
ok "vm2's next backup removed its dead session too; no overlay is left"

# 4. Backup and QEMU killed, its guardian alive: the guardian finds the QEMU
# gone and removes the session's files itself.
"$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" --chain slow2 --rate-limit 2M \
  >/dev/null 2>"$WORK/guarded.log" &
backup=$!
wait_for_export "$WORK/vm"
sleep 0.5
session=$(session_of $backup)
guardian=$(guardian_of $backup)
kill_and_reap "$backup" "$(vm_pid "$WORK/vm")"
vm_stop "$WORK/vm"
deadline=$((SECONDS + 40))
while [[ -d /proc/$guardian ]]; do
  ((SECONDS < deadline)) || fail "guardian $guardian still runs"
  sleep 0.1
done
[[ -z $(files_of "$session") ]] || fail "the guardian left $(files_of "$session"): $(cat "$WORK/guarded.log")"
grep -q "backup session $session ended without cleaning up and its QEMU is gone" "$WORK/guarded.log" ||
  fail "the guardian did not say why: $(cat "$WORK/guarded.log")"
ok "backup and QEMU killed, guardian alive: the guardian removed the session's files"

# 5. The same, but the VM is restarted before the guardian gets to it (held
# with SIGSTOP): the monitor now reaches another QEMU process, which the
# guardian must leave alone; it removes the files only.
vm_start "$WORK/vm" "virtio0=$WORK/d0.qcow2"
"$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" --chain slow3 --rate-limit 2M \
  >/dev/null 2>"$WORK/guarded2.log" &
backup=$!
wait_for_export "$WORK/vm"
session=$(session_of $backup)
guardian=$(guardian_of $backup)
kill -STOP "$guardian"
on_exit "kill -CONT $guardian 2>/dev/null"  # a stopped guardian would ignore the final SIGTERM
kill_and_reap "$backup" "$(vm_pid "$WORK/vm")"
vm_stop "$WORK/vm"
vm_start "$WORK/vm" "virtio0=$WORK/d0.qcow2"
kill -CONT "$guardian"
deadline=$((SECONDS + 40))
while [[ -d /proc/$guardian ]]; do
  ((SECONDS < deadline)) || fail "guardian $guardian still runs"
  sleep 0.1
done
grep -q "backup session $session ended without cleaning up and its QEMU (pid:.*) is gone; .* now reaches pid:" \
  "$WORK/guarded2.log" || fail "the guardian did not notice the new QEMU: $(cat "$WORK/guarded2.log")"
[[ -z $(files_of "$session") ]] || fail "the guardian left $(files_of "$session")"
point=$("$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" 2>>"$WORK/ferry.log") || fail "backup failed"
ok "VM restarted before the guardian ran: it removed the files only, and the next backup works"
