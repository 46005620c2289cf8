#!/usr/bin/env bash
# libvirt hosts (issue 4) against real libvirtd + QEMU: full and incremental
# backups of a running 2-disk domain through checkpoints, every point bit-exact;
# restore-vm defines a domain that starts; checkpoints deleted behind Ferry's
# back, a restarted domain, a run killed mid-backup; a shut-off domain, kept
# from starting while Ferry reads it and starting fine afterwards.
. "$(dirname "$0")/common.sh" "$@"
# shellcheck source=../lib/libvirt.sh
. "$TESTS_DIR/lib/libvirt.sh"
on_exit lv_cleanup_all
lv_ensure_daemons || { echo "skip: no libvirtd"; exit 77; }
URI=$LV_URI

MiB=$((1024 * 1024))
# Images live where libvirt's QEMU user can reach them.
chmod 755 "$WORK"
make_data_disk "$WORK/vda.qcow2" qcow2 $((64 * MiB))
make_data_disk "$WORK/vdb.raw" raw $((32 * MiB))
DOM=ferry-it-$$-$RANDOM
lv_define $DOM "vda=$WORK/vda.qcow2" "vdb=$WORK/vdb.raw"
"$FERRY" init --repo "$WORK/repo"
mkdir -p "$WORK/ref"

backup() {  # [ferry options]; sets $point, keeps reference copies
  if [[ $(lv_virsh domstate $DOM) != "shut off" ]]; then lv_flush $DOM vda; lv_flush $DOM vdb; fi
  qemu-img convert -U -O raw "$WORK/vda.qcow2" "$WORK/ref/next-vda"
  qemu-img convert -U -O raw "$WORK/vdb.raw" "$WORK/ref/next-vdb"
  point=$("$FERRY" backup --repo "$WORK/repo" --libvirt $URI --vm $DOM "$@" 2>"$WORK/backup.log") ||
    fail "backup failed: $(cat "$WORK/backup.log")"
  mv "$WORK/ref/next-vda" "$WORK/ref/$point-vda"; mv "$WORK/ref/next-vdb" "$WORK/ref/$point-vdb"
}
check_point() {
  local disk
  for disk in $(field "$1" vda name) $(field "$1" vdb name); do
    rm -f "$WORK/restored"
    "$FERRY" restore --repo "$WORK/repo" --point "$1" --disk $disk --to "$WORK/restored"
    cmp -s "$WORK/restored" "$WORK/ref/$1-$disk" || fail "point $1 disk $disk does not restore bit-exact"
  done
}
expect_mode() {  # POINT DISK MODE [REASON]
  local mode reason
  mode=$(field "$1" "$2" cbt.mode) reason=$(field "$1" "$2" cbt.reason)
  [[ $mode == "$3" ]] || fail "point $1 disk $2 is '$mode' ($reason), expected $3"
  [[ -z ${4:-} || $reason == *"$4"* ]] || fail "point $1 disk $2: reason '$reason' lacks '$4'"
}

# --- full, then incrementals with writes in between.
backup; p1=$point
expect_mode $p1 vda full "first backup"
expect_mode $p1 vdb full "only for qcow2"
[[ -s $WORK/repo/points/$p1/domain.xml ]] || fail "the point has no domain XML"
lv_write $DOM vda 0x61 5M 64k; lv_write $DOM vdb 0x62 7M 1M
backup; p2=$point
expect_mode $p2 vda incremental
expect_mode $p2 vdb full "libvirt keeps checkpoints only for qcow2"
[[ $(field $p2 vda stats.read_bytes) -le $MiB ]] || fail "incremental read $(field $p2 vda stats.read_bytes) bytes for a 64k write"
lv_write $DOM vda 0x63 $((64 * MiB - 512)) 512
backup; p3=$point
expect_mode $p3 vda incremental
for p in $p1 $p2 $p3; do check_point $p; done
[[ $(lv_virsh checkpoint-list --name $DOM | wc -l) -eq 1 ]] || fail "checkpoints pile up: $(lv_virsh checkpoint-list --name $DOM)"
ok "full and incremental backups of a running 2-disk domain restore bit-exact; one checkpoint kept"

backup --exclude-disk vdb
[[ -z $(field $point vdb name) && -n $(field $point vda name) ]] || fail "--exclude-disk vdb not honoured"
expect_mode $point vda incremental
ok "disk exclusion"

# --- restore-vm: a new domain (new name, UUID, MAC) that starts.
NEW=$DOM-restored
LV_DOMAINS+=("$NEW")
"$FERRY" restore-vm --repo "$WORK/repo" --point $p3 --libvirt $URI --name $NEW --dir "$WORK/restored-vm" >/dev/null
lv_virsh start --paused $NEW >/dev/null || fail "restored domain does not start"
[[ $(lv_virsh domuuid $NEW) != "$(lv_virsh domuuid $DOM)" ]] || fail "restored domain kept the UUID"
lv_virsh dumpxml $NEW | grep -q "52:54:00:12:34:56" && fail "restored domain kept the MAC address"
qemu-img convert -U -O raw "$WORK/restored-vm/$NEW-vda.qcow2" "$WORK/new-vda.raw"
cmp -s "$WORK/new-vda.raw" "$WORK/ref/$p3-vda" ||
  fail "restored domain's vda differs from the point"
lv_virsh destroy $NEW >/dev/null
expect_error 2 "already exists" "$FERRY" restore-vm --repo "$WORK/repo" --point $p3 --libvirt $URI --name $NEW --dir "$WORK/x"
expect_error 2 "add --yes" "$FERRY" restore-vm --repo "$WORK/repo" --point $p3 --libvirt $URI --overwrite
ok "restore-vm defines a new domain that starts"

# --- checkpoint deleted behind Ferry's back.
lv_virsh checkpoint-delete $DOM "$(field $point vda cbt.bitmap)" >/dev/null
lv_write $DOM vda 0x64 9M 4k
backup
expect_mode $point vda full "is missing"
check_point $point
ok "checkpoint deleted behind our back: full read, reported"

# --- a run killed mid-backup leaves libvirt's job and a new checkpoint.
lv_write $DOM vda 0x65 0 16M
"$FERRY" backup --repo "$WORK/repo" --libvirt $URI --vm $DOM --rate-limit 2M >/dev/null 2>"$WORK/killed.log" &
pid=$!
for _ in $(seq 100); do compgen -G "$FERRY_RUNTIME_DIR/libvirt-*/nbd.sock" >/dev/null && break; sleep 0.1; done
sleep 1
kill -9 $pid; wait $pid 2>/dev/null || true
lv_write $DOM vda 0x66 20M 4k
backup
grep -q "ending the backup job a dead ferry session" "$WORK/backup.log" || fail "the dead run's job was not reported: $(cat "$WORK/backup.log")"
check_point $point
[[ -n $(field $point vda cbt.mode) ]] || fail "no mode recorded"
echo "after the killed run: vda $(field $point vda cbt.mode) $(field $point vda cbt.reason)"
lv_write $DOM vda 0x67 21M 4k
backup
expect_mode $point vda incremental
check_point $point
ok "killed run: its job ended, its checkpoint sorted out, next points correct"

# --- domain restarted: virsh destroy lets QEMU store its persistent bitmaps
# (SIGTERM), so the chain stays incremental...
lv_virsh destroy $DOM >/dev/null; lv_virsh start --paused $DOM >/dev/null
lv_write $DOM vda 0x68 30M 4k
backup
expect_mode $point vda incremental
check_point $point
ok "domain restarted: qcow2 bitmap persisted, still incremental and correct"
# ... but QEMU killed outright leaves the bitmap inconsistent: full read.
kill -9 "$(cat /run/libvirt/qemu/$DOM.pid)"
for _ in $(seq 100); do [[ $(lv_virsh domstate $DOM) == "shut off" ]] && break; sleep 0.1; done
lv_virsh start --paused $DOM >/dev/null
lv_write $DOM vda 0x6b 31M 4k
backup
expect_mode $point vda full
check_point $point
echo "after QEMU was killed: vda full: $(field $point vda cbt.reason)"
ok "QEMU killed: full read, reported"

# --- shut-off domain.
lv_write $DOM vda 0x69 40M 4k
backup
lv_quit $DOM || fail "domain did not stop"
backup
check_point $point
echo "shut off: vda $(field $point vda cbt.mode) $(field $point vda cbt.reason)"
# While Ferry reads it, the domain cannot start (qemu-nbd holds the image lock).
"$FERRY" backup --repo "$WORK/repo" --libvirt $URI --vm $DOM --chain offline-slow --disk vda --rate-limit 4M >/dev/null 2>"$WORK/off.log" &
pid=$!
for _ in $(seq 100); do compgen -G "$FERRY_RUNTIME_DIR/libvirt-*/vda.sock" >/dev/null && break; sleep 0.1; done
if lv_virsh start --paused $DOM >/dev/null 2>&1; then fail "the domain started while Ferry read its disks"; fi
wait $pid || fail "offline backup failed: $(cat "$WORK/off.log")"
lv_virsh start --paused $DOM >/dev/null || fail "the domain does not start after the offline backup"
lv_write $DOM vda 0x6a 41M 4k
backup
check_point $point
echo "back online: vda $(field $point vda cbt.mode) $(field $point vda cbt.reason)"
ok "shut-off domain: backed up, kept from starting meanwhile, starts afterwards"
# --- one disk back into the existing domain, which must be shut off.
expect_error 2 "shut it off" "$FERRY" restore --repo "$WORK/repo" --point $p1 --disk vdb --libvirt $URI --vm $DOM
lv_quit $DOM || fail "domain did not stop"
"$FERRY" restore --repo "$WORK/repo" --point $p1 --disk vdb --libvirt $URI --vm $DOM
cmp -s "$WORK/vdb.raw" "$WORK/ref/$p1-vdb" || fail "vdb was not restored to point $p1"
expect_error 3 "has no file-backed disk 'vdz'" "$FERRY" restore --repo "$WORK/repo" --point $p1 --disk vdb --libvirt $URI --vm $DOM --target-disk vdz
lv_virsh start --paused $DOM >/dev/null || fail "the domain does not start after a disk restore"
ok "one disk restored into the shut-off domain, which starts"
# --- the whole VM back over the original (powered off first).
uuid=$(lv_virsh domuuid $DOM)
"$FERRY" restore-vm --repo "$WORK/repo" --point $p2 --libvirt $URI --overwrite --yes >/dev/null
[[ $(lv_virsh domuuid $DOM) == "$uuid" ]] || fail "--overwrite changed the domain's UUID"
qemu-img convert -U -O raw "$WORK/vda.qcow2" "$WORK/over-vda.raw"
cmp -s "$WORK/over-vda.raw" "$WORK/ref/$p2-vda" || fail "--overwrite did not bring vda back to point $p2"
cmp -s "$WORK/vdb.raw" "$WORK/ref/$p2-vdb" || fail "--overwrite did not bring vdb back to point $p2"
lv_virsh start --paused $DOM >/dev/null || fail "the domain does not start after --overwrite"
ok "restore-vm --overwrite: original domain powered off, disks back to the point, starts"
# --- UEFI firmware state: the NVRAM is kept with the point and restored.
UDOM=$DOM-uefi
qemu-img create -q -f qcow2 "$WORK/uefi.qcow2" 16M
LV_UEFI=1 lv_define $UDOM "vda=$WORK/uefi.qcow2"
nvram=$(lv_virsh dumpxml $UDOM | sed -n 's|.*<nvram[^>]*>\(.*\)</nvram>.*|\1|p')
[[ -f $nvram ]] || fail "the UEFI domain has no NVRAM file"
upoint=$("$FERRY" backup --repo "$WORK/repo" --libvirt $URI --vm $UDOM 2>/dev/null)
cmp -s "$WORK/repo/points/$upoint/nvram.fd" "$nvram" || fail "the point's NVRAM differs from the domain's"
LV_DOMAINS+=("$UDOM-restored")
# Into a storage pool this time.
POOL=ferry-it-pool-$$
mkdir -p "$WORK/uefi-restored"
lv_virsh pool-define-as $POOL dir --target "$WORK/uefi-restored" >/dev/null
lv_virsh pool-start $POOL >/dev/null
on_exit "lv_virsh pool-destroy $POOL >/dev/null 2>&1; lv_virsh pool-undefine $POOL >/dev/null 2>&1"
"$FERRY" restore-vm --repo "$WORK/repo" --point $upoint --libvirt $URI --pool $POOL >/dev/null
lv_virsh vol-list $POOL | grep -q "$UDOM-restored-vda.qcow2" || fail "the restored disk is not a volume of pool $POOL"
expect_error 3 "no storage pool 'nopool'" "$FERRY" restore-vm --repo "$WORK/repo" --point $upoint --libvirt $URI --name x --pool nopool
new_nvram=$(lv_virsh dumpxml --inactive $UDOM-restored | sed -n 's|.*<nvram[^>]*>\(.*\)</nvram>.*|\1|p')
[[ $new_nvram == "$WORK/uefi-restored/"* ]] || fail "restored domain's NVRAM is '$new_nvram'"
cmp -s "$new_nvram" "$nvram" || fail "restored NVRAM differs"
lv_virsh start --paused $UDOM-restored >/dev/null || fail "restored UEFI domain does not start"
ok "UEFI NVRAM kept with the point and restored with the VM, into a storage pool"
"$FERRY" verify --repo "$WORK/repo" | grep -q '^OK' || fail "verify not clean"
