#!/usr/bin/env bash
# The inventory a worker reports, read from the host itself: a directory of
# QMP monitor sockets (Proxmox-style <vmid>.qmp) with two running VMs, a
# stale socket and a stray file; a VM stopped meanwhile; a monitor busy with
# another client; and every domain of a libvirt connection.
. "$(dirname "$0")/common.sh" "$@"

inv() { "$FERRY" inventory "$@" --json; }
jq_py() { python3 -c "import json,sys; d=json.load(sys.stdin); $1" "${@:2}"; }

make_data_disk "$WORK/a.qcow2" qcow2 64M
make_data_disk "$WORK/b0.raw" raw 16M
make_data_disk "$WORK/b1.qcow2" qcow2 32M
VM_NAME=inv-a VM_UUID=00000000-0000-4000-8000-00000000000a vm_start "$WORK/vma" "scsi0=$WORK/a.qcow2"
VM_NAME=inv-b VM_UUID=00000000-0000-4000-8000-00000000000b vm_start "$WORK/vmb" "virtio0=$WORK/b0.raw" "virtio1=$WORK/b1.qcow2"
mkdir "$WORK/qmp"
ln -s "$WORK/vma/qmp.sock" "$WORK/qmp/100.qmp"
ln -s "$WORK/vmb/qmp.sock" "$WORK/qmp/101.qmp"
python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.close()' "$WORK/qmp/102.qmp"
echo "not a socket" >"$WORK/qmp/README"

inv --qmp-dir "$WORK/qmp" >"$WORK/inv1.json"
jq_py '
vms = {v["name"]: v for v in d["vms"]}
assert sorted(vms) == ["inv-a", "inv-b"], vms
assert vms["inv-a"]["uuid"] == "00000000-0000-4000-8000-00000000000a"
assert [(x["name"], x["size"], x["format"]) for x in vms["inv-a"]["disks"]] == [("scsi0", 64 << 20, "qcow2")], vms["inv-a"]
assert [(x["name"], x["size"], x["format"]) for x in vms["inv-b"]["disks"]] == [("virtio0", 16 << 20, "raw"), ("virtio1", 32 << 20, "qcow2")], vms["inv-b"]
assert vms["inv-b"]["state"] in ("running", "paused", "prelaunch"), vms["inv-b"]["state"]
assert [p["source"].rsplit("/", 1)[1] for p in d["problems"]] == ["102.qmp"], d["problems"]
' <"$WORK/inv1.json" || fail "inventory: $(cat "$WORK/inv1.json")"
"$FERRY" inventory --qmp-dir "$WORK/qmp" | grep -q "^inv-b .*virtio0 (raw, 16.0 MiB), virtio1 (qcow2, 32.0 MiB)" ||
  fail "table: $("$FERRY" inventory --qmp-dir "$WORK/qmp")"
ok "two VMs with their disks; the stale socket is one problem, the stray file ignored"

# A monitor busy with another client is a problem, not a hang.
python3 - "$WORK/vmb/qmp.sock" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.recv(4096); time.sleep(8)
PY
holder=$!
sleep 0.5
start=$SECONDS
inv --qmp-dir "$WORK/qmp" --timeout 1 | jq_py '
assert [v["name"] for v in d["vms"]] == ["inv-a"], d
assert sorted(p["source"].rsplit("/", 1)[1] for p in d["problems"]) == ["101.qmp", "102.qmp"], d["problems"]
' || fail "busy monitor"
((SECONDS - start < 6)) || fail "inventory waited $((SECONDS - start)) s on a busy monitor"
kill $holder 2>/dev/null; wait $holder 2>/dev/null || true
ok "a monitor busy with another client is reported, within the timeout"

vm_stop "$WORK/vma"
inv --qmp-dir "$WORK/qmp" | jq_py '
assert [v["name"] for v in d["vms"]] == ["inv-b"], d
# QEMU removed its socket: what is left is a dangling link, not a monitor.
assert [p["source"].rsplit("/", 1)[1] for p in d["problems"]] == ["102.qmp"], d["problems"]
' || fail "after stopping inv-a: $(inv --qmp-dir "$WORK/qmp")"
ok "a VM that stopped leaves the inventory"
expect_error 3 "does not exist" "$FERRY" inventory --qmp-dir "$WORK/nope"
expect_error 2 "exactly one of" "$FERRY" inventory

# libvirt: every domain, running or shut off.
# shellcheck source=../lib/libvirt.sh
. "$TESTS_DIR/lib/libvirt.sh"
on_exit lv_cleanup_all
lv_ensure_daemons || { echo "skip: no libvirtd for the libvirt part"; exit 0; }
chmod 755 "$WORK"
make_data_disk "$WORK/lv.qcow2" qcow2 48M
DOM=ferry-it-$$-$RANDOM
lv_define $DOM "vda=$WORK/lv.qcow2"
inv --libvirt "$LV_URI" | jq_py '
vm = [v for v in d["vms"] if v["name"] == sys.argv[1]]
assert len(vm) == 1, d
assert [(x["name"], x["size"], x["format"]) for x in vm[0]["disks"]] == [("vda", 48 << 20, "qcow2")], vm
assert vm[0]["state"] in ("running", "paused"), vm[0]["state"]
' "$DOM" || fail "libvirt inventory: $(inv --libvirt "$LV_URI")"
lv_virsh destroy $DOM >/dev/null
inv --libvirt "$LV_URI" | jq_py '
vm = [v for v in d["vms"] if v["name"] == sys.argv[1]]
assert len(vm) == 1 and vm[0]["state"] == "shut off", vm
' "$DOM" || fail "shut-off domain: $(inv --libvirt "$LV_URI")"
ok "libvirt: the domain with its disk, running and then shut off"
