#!/usr/bin/env bash
# A running VM with a qcow2 and a raw disk full of known data: backup,
# restore (raw and qcow2), byte-for-byte comparison, thin output, verify,
# and a second backup that stores nothing new.
. "$(dirname "$0")/common.sh" "$@"

make_data_disk "$WORK/d0.qcow2" qcow2 $((96 * 1024 * 1024 + 512))  # partial last chunk
make_data_disk "$WORK/d1.raw" raw 48M
VM_NAME=it-vm vm_start "$WORK/vm" "virtio0=$WORK/d0.qcow2" "virtio1=$WORK/d1.raw"

"$FERRY" init --repo "$WORK/repo" --chunk-size 1M
point=$("$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" --vm it-vm)
[[ $(points "$WORK/repo") == "$point" ]] || fail "list does not show exactly $point"
ok "backup made point $point"
[[ -z $(ferry_objects "$WORK/vm") ]] || fail "Ferry objects left in QEMU: $(ferry_objects "$WORK/vm")"
[[ -z $(ls -A "$FERRY_SCRATCH_DIR") ]] || fail "overlay files left: $(ls "$FERRY_SCRATCH_DIR")"

"$FERRY" restore --repo "$WORK/repo" --point "$point" --disk virtio0 --to "$WORK/r0.qcow2" --format qcow2
"$FERRY" restore --repo "$WORK/repo" --point "$point" --disk virtio1 --to "$WORK/r1.raw"
"$FERRY" restore --repo "$WORK/repo" --point "$point" --disk virtio0 --to "$WORK/r0.raw" --format raw
qemu-img compare -U "$WORK/d0.qcow2" "$WORK/r0.qcow2" || fail "qcow2 restore differs"
qemu-img compare -U "$WORK/d0.qcow2" "$WORK/r0.raw" || fail "raw restore of the qcow2 disk differs"
qemu-img compare -U -f raw -F raw "$WORK/d1.raw" "$WORK/r1.raw" || fail "raw restore differs"
[[ $(qemu-img info --output=json "$WORK/r0.qcow2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])') == qcow2 ]] ||
  fail "r0.qcow2 is not qcow2"
ok "restores are bit-exact"

# Thin: the restored raw image allocates no more than the source.
src_alloc=$(du -k "$WORK/d1.raw" | cut -f1) out_alloc=$(du -k "$WORK/r1.raw" | cut -f1)
((out_alloc <= src_alloc)) || fail "restored raw allocates ${out_alloc}K, source ${src_alloc}K"
ok "restored raw image is thin (${out_alloc}K allocated of 48M)"

"$FERRY" verify --repo "$WORK/repo" | grep -q '^OK' || fail "verify not clean"
second=$("$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" 2>"$WORK/second.log")
grep -q "0 new chunks" "$WORK/second.log" || fail "unchanged VM stored new chunks: $(cat "$WORK/second.log")"
[[ $(points "$WORK/repo" | wc -l) -eq 2 && $(points "$WORK/repo" | tail -1) == "$second" ]] || fail "second point missing"
ok "second backup of an unchanged VM stored nothing new"

# --disk selects; the point holds only that disk.
third=$("$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" --disk virtio1)
"$FERRY" list --repo "$WORK/repo" --json | python3 -c '
import json, sys
p = [p for p in json.load(sys.stdin)["points"] if p["id"] == sys.argv[1]][0]
assert [d["name"] for d in p["disks"]] == ["virtio1"], p["disks"]' "$third" || fail "--disk virtio1 point has other disks"
ok "--disk selects one disk"
