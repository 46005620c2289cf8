#!/usr/bin/env bash
# A libvirt backup killed with SIGKILL together with its domain's QEMU: no
# backup job is left for the next run to end, yet that run removes the dead
# session's directory (libvirt-<session>: NBD socket, scratch files) and lock,
# and succeeds and restores bit-exact.
. "$(dirname "$0")/common.sh" "$@"
# shellcheck source=../lib/libvirt.sh
. "$TESTS_DIR/lib/libvirt.sh"
on_exit lv_cleanup_all
lv_ensure_daemons || { echo "skip: no libvirtd"; exit 77; }
URI=$LV_URI

chmod 755 "$WORK"
make_data_disk "$WORK/vda.qcow2" qcow2 64M
DOM=ferry-it-$$-$RANDOM
lv_define $DOM "vda=$WORK/vda.qcow2"
"$FERRY" init --repo "$WORK/repo"

"$FERRY" backup --repo "$WORK/repo" --libvirt $URI --vm $DOM --rate-limit 2M >/dev/null 2>"$WORK/killed.log" &
pid=$!
for _ in $(seq 100); do compgen -G "$FERRY_RUNTIME_DIR/libvirt-*/nbd.sock" >/dev/null && break; sleep 0.1; done
sleep 1
dir=$(compgen -G "$FERRY_RUNTIME_DIR/libvirt-*" | head -1)
[[ -n $dir ]] || fail "no session directory appeared: $(cat "$WORK/killed.log")"
session=${dir##*/libvirt-}
[[ -f $FERRY_RUNTIME_DIR/$session.lock ]] || fail "no lock of session $session"
kill -9 $pid "$(cat /run/libvirt/qemu/$DOM.pid)"
wait $pid 2>/dev/null || true
for _ in $(seq 100); do [[ $(lv_virsh domstate $DOM) == "shut off" ]] && break; sleep 0.1; done
[[ -d $dir ]] || fail "the killed session's directory is already gone"
ok "backup and QEMU killed: session $session left $(ls "$dir" | tr '\n' ' ')and its lock"

lv_virsh start --paused $DOM >/dev/null
lv_flush $DOM vda
qemu-img convert -U -O raw "$WORK/vda.qcow2" "$WORK/now.raw"
point=$("$FERRY" backup --repo "$WORK/repo" --libvirt $URI --vm $DOM 2>"$WORK/next.log") ||
  fail "backup after the kill failed: $(cat "$WORK/next.log")"
[[ ! -e $dir ]] || fail "session directory $dir left: $(ls "$dir")"
[[ ! -e $FERRY_RUNTIME_DIR/$session.lock ]] || fail "lock of session $session left"
grep -q "dead ferry session $session" "$WORK/next.log" || fail "the removal was not logged: $(cat "$WORK/next.log")"
"$FERRY" restore --repo "$WORK/repo" --point "$point" --disk vda --to "$WORK/r.raw"
cmp -s "$WORK/r.raw" "$WORK/now.raw" || fail "the backup after the kill restores wrong data"
[[ -z $(ls -A "$FERRY_RUNTIME_DIR" | grep -v '^vm-') ]] || fail "left in the runtime dir: $(ls "$FERRY_RUNTIME_DIR")"
ok "the next backup removed the dead session's directory and lock, and restores bit-exact"
