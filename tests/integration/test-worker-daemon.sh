#!/usr/bin/env bash
# ferry-worker end to end (issue 11): a real coordinator and two ferry-worker
# daemons standing for two hosts, each with its own directory of QMP sockets,
# host B also with a libvirt domain. One job over four VMs: every disk task
# runs on its own host's worker (tier host), every point verifies and
# restores bit-exact, a second run is incremental for every disk, and the
# session log says what happened on which host. Also: a wrong worker token is
# refused, and VMs started or shut down show up in GET /vms within one
# inventory interval.
. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"
. "$TESTS_DIR/lib/libvirt.sh"
on_exit lv_cleanup_all
HAVE_LIBVIRT=1
lv_ensure_daemons || HAVE_LIBVIRT=0

MiB=$((1024 * 1024))
chmod 755 "$WORK"  # libvirt's QEMU user reads the images
DATA=$WORK/coord
coord_init "$DATA"
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 \
  --heartbeat-interval-ms 500 --heartbeat-deadline-ms 4000
"$FERRY" init --repo "$WORK/repo" --chunk-size 1M >/dev/null
api POST /repositories "{\"name\": \"main\", \"location\": \"$WORK/repo\", \"task_slots\": 8}" >/dev/null

# --- two hosts, four VMs ---
mkdir -p "$WORK/qmp-a" "$WORK/qmp-b"
start_qmp_vm() {  # HOST VMID NAME DISK=FORMAT:SIZE...
  local host=$1 vmid=$2 name=$3; shift 3
  local specs=() spec disk fmt size
  for spec in "$@"; do
    disk=${spec%%=*} fmt=${spec#*=} size=${fmt#*:} fmt=${fmt%%:*}
    make_data_disk "$WORK/$name-$disk.$fmt" "$fmt" "$size" "$RANDOM"
    specs+=("$disk=$WORK/$name-$disk.$fmt")
  done
  VM_NAME=$name vm_start "$WORK/vm-$name" "${specs[@]}"
  ln -sf "$WORK/vm-$name/qmp.sock" "$WORK/qmp-$host/$vmid.qmp"
}
start_qmp_vm a 101 vm-a1 "virtio0=qcow2:$((48 * MiB))" "virtio1=raw:$((16 * MiB))"
start_qmp_vm a 102 vm-a2 "virtio0=qcow2:$((32 * MiB))"
start_qmp_vm b 201 vm-b1 "virtio0=raw:$((32 * MiB))"
VMS='"vm-a1", "vm-a2", "vm-b1"'
N_VMS=3
if ((HAVE_LIBVIRT)); then
  DOM=ferry-wd-$$-$RANDOM
  make_data_disk "$WORK/$DOM-vda.qcow2" qcow2 $((32 * MiB)) 7
  lv_define "$DOM" "vda=$WORK/$DOM-vda.qcow2"
  VMS+=", \"$DOM\""
  N_VMS=4
else
  echo "note: no libvirtd here; host B runs QMP VMs only"
  start_qmp_vm b 202 vm-b2 "virtio0=qcow2:$((16 * MiB))"
  VMS+=', "vm-b2"'
  N_VMS=4
fi

# --- the workers: A by flags, B by a configuration file (plus one flag) ---
worker_token wa >"$WORK/wa.token"
worker_token wb >"$WORK/wb.token"
worker_start a --token-file "$WORK/wa.token" --host host-a --cluster c1 --qmp-dir "$WORK/qmp-a" --slots 3 \
  --runtime-dir "$WORK/run-a" --scratch-dir "$WORK/scratch-a" --inventory-interval 1s
cat >"$WORK/wb.conf" <<EOF
# ferry-worker configuration of host B
coordinator = 127.0.0.1:1
token-file = $WORK/wb.token
host = host-b
cluster = c1
qmp-dir = $WORK/qmp-b
$( ((HAVE_LIBVIRT)) && echo "libvirt = $LV_URI")
slots = 2
runtime-dir = $WORK/run-b
scratch-dir = $WORK/scratch-b
inventory-interval = 1s
EOF
# --coordinator on the command line wins over the file's (dead) address.
worker_start b --config "$WORK/wb.conf"
vm_count() { [[ $(api GET /vms | jpy "len(d['vms'])") -ge $1 ]]; }
vm_state_is() { [[ $(api GET "/vms?name=$1" | jpy "d['vms'][0]['state'] if d['vms'] else ''") == "$2" ]]; }
wait_for "both workers and $N_VMS VMs" 30 vm_count $N_VMS
api GET /workers >"$WORK/workers.json"
python3 - "$WORK/workers.json" <<'PY' || fail "workers: $(cat "$WORK/workers.json")"
import json, sys
w = {x["name"]: x for x in json.load(open(sys.argv[1]))["workers"]}
assert w["wa"]["host"] == "host-a" and w["wb"]["host"] == "host-b", w
assert w["wa"]["state"] == "connected" and w["wb"]["state"] == "connected", w
assert w["wa"]["task_slots"] == 3 and w["wa"]["cluster"] == "c1", w
PY
ok "two ferry-worker daemons registered (B configured by file) and reported $N_VMS VMs"

# --- a wrong token is refused ---
echo "not-a-token" >"$WORK/bad.token"
worker_start bad --token-file "$WORK/bad.token" --host host-x --qmp-dir "$WORK/qmp-a" \
  --runtime-dir "$WORK/run-x" --scratch-dir "$WORK/scratch-x"
wait_for "the refusal of a wrong token" 20 grep -qi "token" "$WORK/worker-bad.log"
sleep 1
[[ $(api GET /workers | jpy "len(d['workers'])") == 2 ]] || fail "a worker with a wrong token was registered"
grep -q "not-a-token" "$WORK/worker-bad.log" "$DATA/log" && fail "the wrong token was logged"
worker_kill9 bad
ok "a wrong worker token is refused ($(grep -i -m1 token "$WORK/worker-bad.log" | cut -c1-120))"

# --- one job over the four VMs ---
ref_copy() {  # NAME DISK FILE: the disk as the VM sees it now, raw
  local name=$1 disk=$2
  if [[ -n ${DOM:-} && $name == "$DOM" ]]; then
    lv_flush "$DOM" "$disk"; qemu-img convert -U -O raw "$WORK/$DOM-$disk.qcow2" "$3"
  else
    snapshot_copy "$(ls "$WORK/$name-$disk".*)" "$3" "$WORK/vm-$name" "$disk"
  fi
}
disks_of() { case $1 in vm-a1) echo virtio0 virtio1 ;; vm-*) echo virtio0 ;; *) echo vda ;; esac; }
ALL_VMS=$(echo "$VMS" | tr -d '",')
run_session() {  # -> $S; keeps reference copies in $WORK/ref-$S-VM-DISK
  local vm disk
  for vm in $ALL_VMS; do for disk in $(disks_of "$vm"); do ref_copy "$vm" "$disk" "$WORK/ref-next-$vm-$disk"; done; done
  S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
  wait_for "session $S to end" 240 session_ended "$S"
  api GET "/sessions/$S" >"$WORK/s$S.json"
  [[ $(jpy 'd["state"]' <"$WORK/s$S.json") == succeeded ]] ||
    { api GET "/sessions/$S/log" >&2; fail "session $S: $(jpy '[d["state"], d.get("reason")]' <"$WORK/s$S.json")"; }
  for vm in $ALL_VMS; do for disk in $(disks_of "$vm"); do mv "$WORK/ref-next-$vm-$disk" "$WORK/ref-$S-$vm-$disk"; done; done
}
check_session() {  # S: every disk on its own host's worker, tier host; every point restores bit-exact
  python3 - "$WORK/s$1.json" "$WORK/workers.json" "${DOM:-none}" <<'PY' || fail "session $1's tasks: $(cat "$WORK/s$1.json")"
import json, sys
s = json.load(open(sys.argv[1])); w = {x["id"]: x["host"] for x in json.load(open(sys.argv[2]))["workers"]}
dom = sys.argv[3]
for t in s["tasks"]:
    host = "host-a" if t["vm"].startswith("vm-a") else "host-b"
    assert t["state"] == "succeeded", t
    assert w[t["worker_id"]] == host and t["tier"] == "host", (t, w)
    # Statistics from the real pipeline: the coordinator serves its local repository to the
    # workers (its in-process repository service), so the store is remote: network, not target.
    assert t["busy"] is not None and t["busy"]["network"] is not None and t["busy"]["target"] is None, t
    assert t["bottleneck"] in ("source", "compute", "network"), t
for p in s["snapshots"]:
    host = "host-a" if p["vm"].startswith("vm-a") else "host-b"
    assert p["point_id"], p
    assert w[p["worker_id"]] == host, (p, w)
assert len(s["tasks"]) == 5, len(s["tasks"])
assert s["stats"]["tasks_measured"] == 5 and s["stats"]["bottleneck"] is not None, s["stats"]
PY
  "$FERRY" verify --repo "$WORK/repo" >"$WORK/verify.log" 2>&1 || fail "verify: $(cat "$WORK/verify.log")"
  local vm disk point
  for vm in $ALL_VMS; do
    point=$(jpy "[p['point_id'] for p in d['snapshots'] if p['vm'] == '$vm'][0]" <"$WORK/s$1.json")
    for disk in $(disks_of "$vm"); do
      rm -f "$WORK/restored"
      "$FERRY" restore --repo "$WORK/repo" --point "$point" --disk "$disk" --to "$WORK/restored" 2>/dev/null
      cmp -s "$WORK/restored" "$WORK/ref-$1-$vm-$disk" || fail "session $1: $vm/$disk (point $point) does not restore bit-exact"
    done
  done
}
JOB=$(api POST /jobs "{\"name\": \"four\", \"repository\": 1, \"selection\": {\"vms\": [$VMS]}, \"retries\": {\"count\": 0, \"interval_s\": 0}}" | jpy 'd["id"]')
run_session; S1=$S
check_session "$S1"
ok "session $S1: 5 disks of 4 VMs, each on its own host's worker (tier host); verified, restored bit-exact"

api GET "/sessions/$S1/log" >"$WORK/log$S1.json"
for want in "host host-a: snapshot" "host host-b: disk virtio0 of VM vm-b1" "host host-a: disk virtio1 of VM vm-a1" "committed restore point" \
    "of them again after a lost connection; busy: source "; do
  grep -q "$want" "$WORK/log$S1.json" || fail "the session log lacks '$want'"
done
ok "the session log says what ran on which host (worker task logs)"

# --- guest writes, then an incremental run ---
vm_write "$WORK/vm-vm-a1" virtio0 0x5a $((3 * MiB)) $((2 * MiB))
vm_write "$WORK/vm-vm-a1" virtio1 0x5b 0 $((1 * MiB))
vm_write "$WORK/vm-vm-b1" virtio0 0x5c $((7 * MiB)) 4096
[[ -n ${DOM:-} ]] && lv_write "$DOM" vda 0x5d $((5 * MiB)) 65536
run_session; S2=$S
check_session "$S2"
"$FERRY" list --repo "$WORK/repo" --json >"$WORK/list.json"
python3 - "$WORK/list.json" "$WORK/s$S2.json" <<'PY' || fail "second run not incremental for every disk"
import json, sys
points = {p["id"]: p for p in json.load(open(sys.argv[1]))["points"]}
s = json.load(open(sys.argv[2]))
n = 0
for snap in s["snapshots"]:
    p = points[snap["point_id"]]
    for d in p["disks"]:
        mode = d.get("cbt", {}).get("mode")
        assert mode == "incremental", (snap["vm"], d["name"], d.get("cbt"))
        n += 1
assert n == 5, n
PY
read_total=$(jpy 'sum(t["bytes_done"] for t in d["tasks"])' <"$WORK/s$S2.json")
ok "session $S2: incremental for all 5 disks, restored bit-exact"

# --- inventory follows the hosts ---
start_qmp_vm a 103 vm-a3 "virtio0=raw:$((4 * MiB))"
T0=$SECONDS
wait_for "vm-a3 in GET /vms" 10 vm_state_is vm-a3 paused
ok "a VM started on host A shows up in GET /vms after $((SECONDS - T0)) s (interval 1 s)"
vm_stop "$WORK/vm-vm-a3"
wait_for "vm-a3 to be missing" 10 vm_state_is vm-a3 missing
if [[ -n ${DOM:-} ]]; then
  lv_virsh destroy "$DOM" >/dev/null
  wait_for "$DOM to be shut off" 10 vm_state_is "$DOM" shut-off
fi
ok "VMs shut down show up as such (missing, shut-off) within the interval"

# --- nothing left behind ---
for vm in vm-a1 vm-a2 vm-b1; do
  [[ -z $(ferry_objects "$WORK/vm-$vm") ]] || fail "$vm's QEMU still has $(ferry_objects "$WORK/vm-$vm")"
done
worker_stop a; worker_stop b
grep -q "stopping" "$WORK/worker-a.log" || fail "worker a did not stop on SIGTERM"
ok "no snapshot or export left in any VM's QEMU; workers stop on SIGTERM"
