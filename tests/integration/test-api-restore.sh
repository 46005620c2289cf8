#!/usr/bin/env bash
# Restores through the API, run on workers (issue 12, item 8). A coordinator,
# two ferry-worker daemons (host A, host B) and a repository served by a
# separate ferry-repository over TLS. One job backs up a QMP VM on host B
# (and, when libvirtd runs here, a libvirt domain on host A). Then, through
# POST /api/v1/restores (and `ferry --coordinator ... restore`):
#   - one disk of host B's VM into image files on host A (raw and qcow2):
#     each runs on host A's worker (tier host), bit-exact with the disk as
#     it was at backup time;
#   - the libvirt domain as a new domain on host A: defined, every disk
#     bit-exact; one disk into that (shut-off) domain; the whole VM over the
#     original (running, written to since the backup);
#   - a target file that exists is refused and left as it was;
#   - bad input (unknown point or disk, a host without a worker, missing
#     members) is 400 naming the field, and starts nothing.
. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"
. "$TESTS_DIR/lib/libvirt.sh"
on_exit lv_cleanup_all
REPOSITORY_SERVICE=${FERRY_REPOSITORY:?set FERRY_REPOSITORY to the ferry-repository binary}
HAVE_LIBVIRT=1
lv_ensure_daemons || HAVE_LIBVIRT=0
MiB=$((1024 * 1024))
chmod 755 "$WORK"  # libvirt's QEMU user reads the images

# --- the repository, served over TLS by its own process ---
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -days 2 \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$WORK/store"
"$FERRY" init --repo "$WORK/store/main" --chunk-size 1M >/dev/null
# The coordinator mints each worker its own token with the service's key.
REPO_TOKEN=$("$REPOSITORY_SERVICE" key --key-file "$WORK/coordinator.key")
"$REPOSITORY_SERVICE" grant --tokens "$WORK/tokens" --repository main >/dev/null
cat >"$WORK/repository.conf" <<CONF
listen = 127.0.0.1:$PORT
tls-cert = $WORK/cert.pem
tls-key = $WORK/key.pem
repository = main=$WORK/store/main
tokens = $WORK/tokens
coordinator-key = $WORK/coordinator.key
CONF
"$REPOSITORY_SERVICE" --config "$WORK/repository.conf" >>"$WORK/service.log" 2>&1 &
SERVICE_PID=$!
on_exit "kill -9 $SERVICE_PID 2>/dev/null"
wait_for "the repository service" 20 grep -q "serving 1 repositories" "$WORK/service.log"
URL=ferry+tls://127.0.0.1:$PORT/main

DATA=$WORK/coord
coord_init "$DATA"
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --heartbeat-interval-ms 500 --heartbeat-deadline-ms 4000
api POST /repositories "{\"name\": \"main\", \"location\": \"$URL\", \"token\": \"$REPO_TOKEN\"}" >/dev/null
ok "ferry-repository serves the repository over TLS on 127.0.0.1:$PORT; the coordinator holds its key (per-worker tokens)"

# --- host B: a QMP VM; host A: a libvirt domain (when libvirtd runs) ---
mkdir -p "$WORK/qmp-a" "$WORK/qmp-b" "$WORK/out"
make_data_disk "$WORK/vm1-virtio0.qcow2" qcow2 $((24 * MiB)) 3
make_data_disk "$WORK/vm1-virtio1.raw" raw $((8 * MiB)) 4
VM_NAME=vm1 vm_start "$WORK/vm-vm1" "virtio0=$WORK/vm1-virtio0.qcow2" "virtio1=$WORK/vm1-virtio1.raw"
ln -sf "$WORK/vm-vm1/qmp.sock" "$WORK/qmp-b/101.qmp"
VMS='"vm1"'
A_SOURCE=(--qmp-dir "$WORK/qmp-a" --platform libvirt)
if ((HAVE_LIBVIRT)); then
  DOM=ferry-ar-$$-$RANDOM
  make_data_disk "$WORK/$DOM-vda.qcow2" qcow2 $((16 * MiB)) 5
  make_data_disk "$WORK/$DOM-vdb.raw" raw $((4 * MiB)) 6
  lv_define "$DOM" "vda=$WORK/$DOM-vda.qcow2" "vdb=$WORK/$DOM-vdb.raw"
  VMS+=", \"$DOM\""
  A_SOURCE=(--libvirt "$LV_URI")
else
  echo "note: no libvirtd here; the restores into libvirt domains (new, existing, the original) are skipped"
fi
COMMON=(--repository-ca "$WORK/cert.pem" --repository-name localhost --inventory-interval 1s --slots 2)
worker_token wa >"$WORK/wa.token"
worker_token wb >"$WORK/wb.token"
worker_start a --token-file "$WORK/wa.token" --host host-a "${A_SOURCE[@]}" \
  --runtime-dir "$WORK/run-a" --scratch-dir "$WORK/scratch-a" "${COMMON[@]}"
worker_start b --token-file "$WORK/wb.token" --host host-b --qmp-dir "$WORK/qmp-b" \
  --runtime-dir "$WORK/run-b" --scratch-dir "$WORK/scratch-b" "${COMMON[@]}"
N_VMS=$(( HAVE_LIBVIRT ? 2 : 1 ))
vm_count() { [[ $(api GET /vms | jpy "len([v for v in d['vms'] if v['state'] != 'missing'])") -ge $N_VMS ]]; }
wait_for "both workers and $N_VMS VMs" 30 vm_count
workers_connected() { [[ $(api GET /workers | jpy "len([w for w in d['workers'] if w['state'] == 'connected'])") == 2 ]]; }
wait_for "both workers connected" 30 workers_connected
WA=$(api GET /workers | jpy "[w['id'] for w in d['workers'] if w['name'] == 'wa'][0]")
api POST /hosts '{"name": "host-c", "platform": "libvirt"}' >/dev/null  # a host without a worker

# --- one backup, with reference copies of every disk as it was ---
snapshot_copy "$WORK/vm1-virtio0.qcow2" "$WORK/ref-vm1-virtio0" "$WORK/vm-vm1" virtio0
snapshot_copy "$WORK/vm1-virtio1.raw" "$WORK/ref-vm1-virtio1" "$WORK/vm-vm1" virtio1
if ((HAVE_LIBVIRT)); then
  for disk in vda vdb; do
    lv_flush "$DOM" "$disk"
    qemu-img convert -U -O raw "$(ls "$WORK/$DOM-$disk".*)" "$WORK/ref-$DOM-$disk"
  done
fi
JOB=$(api POST /jobs "{\"name\": \"all\", \"repository\": 1, \"selection\": {\"vms\": [$VMS]}, \"retries\": {\"count\": 0, \"interval_s\": 0}}" | jpy 'd["id"]')
S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
wait_for "backup session $S" 120 session_ended "$S"
[[ $(session_state "$S") == succeeded ]] || { api GET "/sessions/$S/log" >&2; fail "backup session $S: $(session_state "$S")"; }
point_of() { api GET "/points?vm=$1" | jpy 'd["points"][0]["id"]'; }
P_VM1=$(point_of vm1)
ok "session $S backed up $N_VMS VMs into the repository over TLS (vm1: point record $P_VM1)"

# --- restores and their checks ---
restore() {  # BODY -> $R, the restore session, once it ended
  R=$(api POST /restores "$1" | jpy 'd["session"]')
  wait_for "restore session $R" 120 session_ended "$R"
  api GET "/sessions/$R" >"$WORK/r$R.json"
}
# The restore's one task ran on host A's worker, at tier host, and the session succeeded.
ran_on_host_a() {
  python3 - "$WORK/r$1.json" "$WA" <<'PY' || { api GET "/sessions/$1/log" >&2; tail -20 "$WORK/worker-a.log" >&2; fail "restore session $1: $(cat "$WORK/r$1.json")"; }
import json, sys
s = json.load(open(sys.argv[1]))
assert s["kind"] == "restore" and s["state"] == "succeeded", (s["state"], s["reason"])
t, = s["tasks"]
assert t["worker_id"] == int(sys.argv[2]) and t["tier"] == "host", t
assert t["tier_reason"] == "worker on the target host", t
assert t["state"] == "succeeded" and t["bytes_done"] == t["bytes_total"] > 0, t
PY
}
restore "{\"point\": $P_VM1, \"disk\": \"virtio0\", \"host\": \"host-a\", \"target\": {\"type\": \"file\", \"path\": \"$WORK/out/vm1-virtio0.raw\"}}"
R1=$R
ran_on_host_a "$R1"
cmp -s "$WORK/out/vm1-virtio0.raw" "$WORK/ref-vm1-virtio0" || fail "restore $R1: vm1/virtio0 is not bit-exact"
api GET "/sessions/$R1/log" >"$WORK/log$R1.json"
for want in "restore started: disk virtio0 of VM vm1" "host host-a: restore disk virtio0 of VM vm1" "session succeeded"; do
  grep -q "$want" "$WORK/log$R1.json" || fail "restore $R1's log lacks '$want'"
done
"$FERRY" --coordinator "$API" session show "$R1" >"$WORK/show.out"
grep -q "^session $R1 (restore, manual): succeeded" "$WORK/show.out" || fail "session show: $(cat "$WORK/show.out")"
grep -q "restore: vm1/virtio0 of point .* onto host host-a" "$WORK/show.out" || fail "session show: $(cat "$WORK/show.out")"
[[ $("$FERRY" --coordinator "$API" restore list --json | jpy "[s['id'] for s in d['sessions']]") == "[$R1]" ]] ||
  fail "restore list does not list restore $R1 alone"
ok "restore $R1: vm1/virtio0 (a VM of host B) into a raw file on host A ran on host A's worker (tier host); bit-exact"

# The CLI: the same, as qcow2, waiting with progress.
"$FERRY" --coordinator "$API" restore disk "$P_VM1" virtio1 --host host-a \
  --to "$WORK/out/vm1-virtio1.qcow2" --format qcow2 --wait >"$WORK/cli.out" 2>&1 ||
  { cat "$WORK/cli.out" >&2; fail "ferry restore disk --wait"; }
R2=$(sed -n 's/^restore session \([0-9]*\) started$/\1/p' "$WORK/cli.out")
[[ -n $R2 ]] || fail "the CLI printed no session id: $(cat "$WORK/cli.out")"
grep -q "session $R2 succeeded" "$WORK/cli.out" || fail "the CLI did not follow the session: $(cat "$WORK/cli.out")"
api GET "/sessions/$R2" >"$WORK/r$R2.json"
ran_on_host_a "$R2"
[[ $(qemu-img info --output=json "$WORK/out/vm1-virtio1.qcow2" | jpy 'd["format"]') == qcow2 ]] || fail "not a qcow2 image"
same_content "$WORK/out/vm1-virtio1.qcow2" "$WORK/ref-vm1-virtio1"
ok "restore $R2 (ferry --coordinator ... restore disk --wait): vm1/virtio1 into a qcow2 image on host A; bit-exact"

# A target that exists: the task fails (bad_input, not retried), nothing is overwritten.
before=$(stat -c '%i %s %Y' "$WORK/out/vm1-virtio0.raw")
restore "{\"point\": $P_VM1, \"disk\": \"virtio1\", \"host\": \"host-a\", \"target\": {\"type\": \"file\", \"path\": \"$WORK/out/vm1-virtio0.raw\"}}"
[[ $(jpy 'd["state"]' <"$WORK/r$R.json") == failed ]] || fail "restore $R onto an existing file: $(cat "$WORK/r$R.json")"
jpy 'd["reason"]' <"$WORK/r$R.json" | grep -q "already exists" || fail "restore $R's reason: $(jpy 'd["reason"]' <"$WORK/r$R.json")"
[[ $(jpy 'd["tasks"][0]["attempt"]' <"$WORK/r$R.json") == 1 ]] || fail "a target that exists was retried"
[[ $(stat -c '%i %s %Y' "$WORK/out/vm1-virtio0.raw") == "$before" ]] || fail "the existing target was touched"
cmp -s "$WORK/out/vm1-virtio0.raw" "$WORK/ref-vm1-virtio0" || fail "the existing target changed"
[[ -z $(compgen -G "$WORK/out/*.ferry-partial-*") ]] || fail "a partial image was left behind"
ok "restore $R onto an existing file failed ($(jpy 'd["reason"]' <"$WORK/r$R.json" | cut -c1-100)); the file is untouched"

# --- bad input: 400 naming the field; nothing started ---
api_error() {  # BODY -> "STATUS FIELD MESSAGE"
  python3 - "$API" "$TOKEN" "$1" <<'PY'
import json, sys, urllib.request, urllib.error
base, token, body = sys.argv[1:4]
req = urllib.request.Request(base + "/api/v1/restores", data=body.encode(), method="POST",
                             headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
try:
    urllib.request.urlopen(req, timeout=30)
    print("202 - accepted")
except urllib.error.HTTPError as e:
    err = json.loads(e.read().decode())["error"]
    print(e.code, err.get("field", "-"), err["message"])
PY
}
expect_400() {  # FIELD BODY [MESSAGE PART]
  local got
  got=$(api_error "$2")
  [[ $got == "400 $1 "* ]] || fail "POST /restores $2 -> $got, expected 400 naming $1"
  [[ -z ${3:-} || $got == *"$3"* ]] || fail "POST /restores $2 -> $got, expected it to mention '$3'"
}
FILE_TARGET="\"target\": {\"type\": \"file\", \"path\": \"$WORK/out/never.raw\"}"
restores_before=$(api GET "/sessions?kind=restore" | jpy 'len(d["sessions"])')
expect_400 point "{\"point\": 999999, \"disk\": \"virtio0\", \"host\": \"host-a\", $FILE_TARGET}" "no restore point"
expect_400 disk "{\"point\": $P_VM1, \"disk\": \"virtio9\", \"host\": \"host-a\", $FILE_TARGET}" "virtio0, virtio1"
expect_400 host "{\"point\": $P_VM1, \"disk\": \"virtio0\", \"host\": \"host-c\", $FILE_TARGET}" "no worker"
expect_400 host "{\"point\": $P_VM1, \"disk\": \"virtio0\", \"host\": \"host-z\", $FILE_TARGET}" "no host named"
expect_400 point "{\"disk\": \"virtio0\", \"host\": \"host-a\", $FILE_TARGET}" "required"
expect_400 target "{\"point\": $P_VM1, \"disk\": \"virtio0\", \"host\": \"host-a\"}" "required"
expect_400 host "{\"point\": $P_VM1, \"disk\": \"virtio0\", $FILE_TARGET}" "required"
expect_400 disk "{\"point\": $P_VM1, \"host\": \"host-a\", $FILE_TARGET}" "required"
expect_400 target.path "{\"point\": $P_VM1, \"disk\": \"virtio0\", \"host\": \"host-a\", \"target\": {\"type\": \"file\"}}" "required"
[[ $(api GET "/sessions?kind=restore" | jpy 'len(d["sessions"])') == "$restores_before" ]] || fail "a refused request started a restore"
[[ ! -e $WORK/out/never.raw ]] || fail "a refused request wrote a file"
expect_error 2 "host: host 'host-c' has no worker" "$FERRY" --coordinator "$API" \
  restore disk "$P_VM1" virtio0 --host host-c --to "$WORK/out/never.raw"
ok "bad input is 400 naming the field (point, disk, host, target, target.path), and starts nothing"

# --- a whole VM as a new libvirt domain on host A ---
if ((HAVE_LIBVIRT)); then
  P_DOM=$(point_of "$DOM")
  NEW=$DOM-copy
  LV_DOMAINS+=("$NEW")
  restore "{\"point\": $P_DOM, \"host\": \"host-a\", \"target\": {\"type\": \"new_domain\", \"name\": \"$NEW\", \"directory\": \"$WORK/vms\"}}"
  R3=$R
  ran_on_host_a "$R3"
  [[ $(lv_virsh domstate "$NEW") == "shut off" ]] || fail "domain $NEW is not defined (or not shut off)"
  [[ $(lv_virsh domuuid "$NEW") != $(lv_virsh domuuid "$DOM") ]] || fail "the new domain kept the original's UUID"
  for disk in vda vdb; do
    image=$(lv_virsh domblklist "$NEW" | awk -v d="$disk" '$1 == d {print $2}')
    [[ $image == "$WORK/vms/$NEW-$disk.qcow2" ]] || fail "disk $disk of $NEW is '$image'"
    same_content "$image" "$WORK/ref-$DOM-$disk"
  done
  [[ $(jpy 'd["tasks"][0]["disk"]' <"$WORK/r$R3.json") == None ]] || fail "a whole-VM restore's task names a disk"
  ok "restore $R3: domain $DOM (2 disks) as the new domain $NEW on host A's worker (tier host); every disk bit-exact"

  # One disk into the (shut-off) new domain, over a damaged image.
  qemu-io -f qcow2 -c "write -P 0x77 0 1M" "$WORK/vms/$NEW-vdb.qcow2" >/dev/null
  restore "{\"point\": $P_DOM, \"disk\": \"vdb\", \"host\": \"host-a\", \"target\": {\"type\": \"libvirt_domain\", \"vm\": \"$NEW\"}}"
  ran_on_host_a "$R"
  same_content "$WORK/vms/$NEW-vdb.qcow2" "$WORK/ref-$DOM-vdb"
  ok "restore $R: disk vdb into the shut-off domain $NEW (its qcow2 image rebuilt); bit-exact"

  # The whole VM over the original, which runs and was written to since; the
  # host defaults to the one the VM is on (host A).
  lv_write "$DOM" vda 0x5d $((2 * MiB)) 65536
  lv_write "$DOM" vdb 0x5e 0 4096
  uuid=$(lv_virsh domuuid "$DOM")
  restore "{\"point\": $P_DOM, \"target\": {\"type\": \"original_domain\", \"confirm\": true}}"
  ran_on_host_a "$R"
  [[ $(jpy 'd["restore"]["host"]' <"$WORK/r$R.json") == host-a ]] || fail "the host did not default to the VM's"
  [[ $(lv_virsh domuuid "$DOM") == "$uuid" ]] || fail "the original domain's UUID changed"
  [[ $(lv_virsh domstate "$DOM") == "shut off" ]] || fail "the original domain was not powered off"
  for disk in vda vdb; do same_content "$(ls "$WORK/$DOM-$disk".*)" "$WORK/ref-$DOM-$disk"; done
  ok "restore $R: domain $DOM over the original (powered off; host defaulted to host-a); both disks back to the point"
fi

# --- nothing secret in any log ---
for f in "$WORK/service.log" "$WORK/worker-a.log" "$WORK/worker-b.log" "$DATA/log"; do
  for t in "$REPO_TOKEN" "$(cat "$WORK/wa.token")" "$(cat "$WORK/wb.token")"; do
    grep -qF "$t" "$f" && fail "a token appears in $f"
  done
done
ok "no token in any log"
worker_stop a; worker_stop b
kill -TERM "$SERVICE_PID"; wait "$SERVICE_PID" 2>/dev/null || true
