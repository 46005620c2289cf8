#!/usr/bin/env bash
# The coordinator deploys the worker appliance onto a libvirt host (issue 13,
# item 4), here this machine's own libvirtd: POST /hosts/{id}/worker uploads
# the image and a config drive into a storage pool, defines and starts
# ferry-appliance-<host> (user-mode networking: the coordinator is 10.0.2.2),
# whose worker registers; with a short idle_shutdown_s it is shut down
# (ACPI) to stopped; work queued for its host starts it again and it
# re-registers, and backs up a VM of its host (this machine: QEMU reached
# over SSH to a test sshd, as on a Proxmox-style host; the snapshot read over
# NBD/TCP with TLS; the chunks sent to the coordinator's repository service):
# the job succeeds and its point restores bit-exact. DELETE removes domain,
# volumes and worker. Bad requests (no
# coordinator_address, an unknown pool) are 400 naming the field and leave
# nothing; a deployment that fails in the background, or that a coordinator
# killed (-9) mid-way did not finish, leaves nothing either.
# Skips (77) only where libvirtd cannot run.
. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"
. "$TESTS_DIR/lib/libvirt.sh"
. "$TESTS_DIR/lib/sshd.sh"
ROOT=$(cd "$TESTS_DIR/.." && pwd)
export FERRY_IMAGE_ZSTD_LEVEL=9
for tool in virsh libvirtd mkfs.fat mcopy; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool is not installed"; exit 77; }
done
lv_ensure_daemons || { echo "SKIP: libvirtd cannot run here"; exit 77; }
on_exit lv_cleanup_all
chmod 755 "$WORK"  # libvirt's QEMU user reads the pool's volumes

HOST=deploy-$$
DOMAIN=ferry-appliance-$HOST
POOL=ferry-test-$$
PASSED=0
on_exit "lv_virsh destroy $DOMAIN >/dev/null 2>&1; lv_virsh undefine $DOMAIN >/dev/null 2>&1; true"
on_exit '((PASSED)) || { [[ -f /var/log/libvirt/qemu/'"$DOMAIN"'-console.log ]] && { echo "== console" >&2; tail -n 20 /var/log/libvirt/qemu/'"$DOMAIN"'-console.log >&2; }; [[ -n ${DATA:-} && -f $DATA/log ]] && tail -n 30 "$DATA/log" >&2; true; }'

# --- the image, a storage pool of the test's own ---
"$ROOT/scripts/build-image" "$WORK/image" 2>"$WORK/build.log" || { tail -20 "$WORK/build.log" >&2; fail "build-image failed"; }
mkdir -p "$WORK/pool"
lv_virsh pool-define-as "$POOL" dir --target "$WORK/pool" >/dev/null
on_exit "lv_virsh pool-destroy $POOL >/dev/null 2>&1; lv_virsh pool-undefine $POOL >/dev/null 2>&1; true"
lv_virsh pool-start "$POOL" >/dev/null
ok "image built, pool $POOL at $WORK/pool"

DATA=$WORK/coord
coord_init "$DATA"
# The appliance reaches this machine's loopback as 10.0.2.2: the repository
# service is advertised there.
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --appliance-image "$WORK/image" \
  --heartbeat-interval-ms 1000 --heartbeat-deadline-ms 8000 --repository-advertise 10.0.2.2
RPC_PORT=${RPC##*:}
HOST_ID=$(api POST /hosts "{\"name\": \"$HOST\", \"platform\": \"libvirt\"}" | jpy 'd["id"]')

appliance() { api GET "/hosts/$HOST_ID" | jpy "(d['appliance'] or {}).get('$1')"; }
volumes() { lv_virsh vol-list "$POOL" | awk '{print $1}' | grep -c "^$DOMAIN" || true; }
nothing_left() {
  lv_virsh dominfo "$DOMAIN" >/dev/null 2>&1 && fail "$1: domain $DOMAIN exists"
  lv_virsh pool-refresh "$POOL" >/dev/null
  [[ $(volumes) == 0 ]] || fail "$1: volumes left in $POOL: $(lv_virsh vol-list "$POOL")"
  [[ $(api GET /workers | jpy "len([w for w in d['workers'] if w['name'] == 'appliance-$HOST'])") == 0 ]] ||
    fail "$1: a worker record is left"
}
BODY_TAIL='"network": {"type": "user"}, "worker_config": "qmp-dir = /var/empty\nplatform = libvirt"'

# --- bad requests: 400 naming the field, nothing made ---
r=$(api_status POST "/hosts/$HOST_ID/worker" "{\"libvirt_uri\": \"$LV_URI\", \"pool\": \"$POOL\", $BODY_TAIL}")
[[ ${r%% *} == 400 && $(jpy 'd["error"]["field"]' <<<"${r#* }") == coordinator_address ]] || fail "no coordinator_address: $r"
r=$(api_status POST "/hosts/$HOST_ID/worker" "{\"libvirt_uri\": \"$LV_URI\", \"pool\": \"no-such-pool-$$\", \"coordinator_address\": \"10.0.2.2:$RPC_PORT\", $BODY_TAIL}")
[[ ${r%% *} == 400 && $(jpy 'd["error"]["field"]' <<<"${r#* }") == pool ]] || fail "an unknown pool: $r"
[[ $(api GET "/hosts/$HOST_ID" | jpy 'd["appliance"]') == None ]] || fail "a refused request left an appliance"
nothing_left "after refused requests"
ok "refused: $(jpy 'd["error"]["message"]' <<<"${r#* }" | cut -c1-100)"

# --- a deployment that fails in the background (a bridge the host lacks: the
# domain cannot start) leaves nothing behind but its reason ---
r=$(api_status POST "/hosts/$HOST_ID/worker" "{\"libvirt_uri\": \"$LV_URI\", \"pool\": \"$POOL\", \"coordinator_address\": \"10.0.2.2:$RPC_PORT\", \"network\": {\"type\": \"bridge\", \"source\": \"nobr$$\"}, \"worker_config\": \"qmp-dir = /var/empty\"}")
[[ ${r%% *} == 202 ]] || fail "deploy onto a missing bridge: $r"
failed() { [[ $(appliance state) == failed ]]; }
wait_for "the deployment onto a missing bridge to fail" 60 failed
[[ $(appliance reason) == *"nobr$$"* ]] || fail "the reason does not name the bridge: $(appliance reason)"
[[ $(appliance worker_id) == None ]] || fail "a failed appliance keeps a worker: $(appliance worker_id)"
nothing_left "after a failed deployment"
ok "a failed deployment left nothing: $(appliance reason | cut -c1-110)"

# --- the coordinator killed (-9) mid-deployment: on restart the deployment is
# failed, and what it had made in libvirt is gone ---
r=$(api_status POST "/hosts/$HOST_ID/worker" "{\"libvirt_uri\": \"$LV_URI\", \"pool\": \"$POOL\", \"coordinator_address\": \"10.0.2.2:$RPC_PORT\", $BODY_TAIL}")
[[ ${r%% *} == 202 ]] || fail "deploy (to be interrupted): $r"
for _ in $(seq 400); do lv_virsh vol-list "$POOL" 2>/dev/null | grep -q "^ *$DOMAIN" && break; sleep 0.02; done
coord_kill9
made=$(lv_virsh vol-list "$POOL" | grep -c "^ *$DOMAIN" || true)
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --appliance-image "$WORK/image" \
  --heartbeat-interval-ms 1000 --heartbeat-deadline-ms 8000 --repository-advertise 10.0.2.2
RPC_PORT=${RPC##*:}
[[ $(appliance state) == failed && $(appliance reason) == *"coordinator stopped during the deployment"* ]] ||
  fail "after a restart mid-deployment: $(appliance state): $(appliance reason)"
nothing_left "after a restart mid-deployment"
[[ -d $DATA/appliance-work && -z $(ls -A "$DATA/appliance-work") ]] ||
  fail "the interrupted deployment's files (its token) are left: $(ls -lA "$DATA/appliance-work" 2>&1)"
ok "killed mid-deployment ($made volume(s) made): failed on restart, nothing left: $(appliance reason)"

# --- the host's side: a VM whose QMP socket is where Proxmox keeps them,
# reachable from the appliance only through sshd (as in test-appliance) ---
sshd_start "$WORK/sshd"
mkdir -p "$WORK/qemu-server"
make_data_disk "$WORK/vm-d1-virtio0.qcow2" qcow2 $((16 * 1024 * 1024)) 13
VM_NAME=vm-$HOST vm_start "$WORK/vm-d1" "virtio0=$WORK/vm-d1-virtio0.qcow2"
ln -sf "$WORK/vm-d1/qmp.sock" "$WORK/qemu-server/101.qmp"
ln -sf "$WORK/vm-d1/qemu.pid" "$WORK/qemu-server/101.pid"
# What the request carries: how the appliance reaches its host (worker_config)
# and the credentials for it (files, beside the configuration on the drive).
python3 - "$LV_URI" "$POOL" "10.0.2.2:$RPC_PORT" "$SSHD_PORT" "$WORK" "$SSHD_KEY" "$SSHD_KNOWN_HOSTS" >"$WORK/deploy.json" <<'PY'
import json, sys
uri, pool, coordinator, ssh_port, work, key, known_hosts = sys.argv[1:]
config = "\n".join([
    "platform = libvirt", f"qmp-ssh = root@10.0.2.2:{ssh_port}", "ssh-key = ssh_key",
    "ssh-known-hosts = known_hosts", f"qmp-remote-dir = {work}/qemu-server",
    f"host-runtime-dir = {work}/host-run", f"host-scratch-dir = {work}/host-scratch",
    "export-listen = 127.0.0.1", "inventory-interval = 2s"])
hosts = open(known_hosts).read().replace("[127.0.0.1]", "[10.0.2.2]")
print(json.dumps({"libvirt_uri": uri, "pool": pool, "coordinator_address": coordinator,
                  "idle_shutdown_s": 15, "memory_mib": 768, "network": {"type": "user"},
                  "worker_config": config, "files": {"ssh_key": open(key).read(), "known_hosts": hosts}}))
PY
T0=$SECONDS
r=$(api_status POST "/hosts/$HOST_ID/worker" "$(cat "$WORK/deploy.json")")
[[ ${r%% *} == 202 ]] || fail "deploy: $r"
[[ $(jpy 'd["appliance"]["state"]' <<<"${r#* }") == deploying ]] || fail "deploy: not deploying: $r"
connected() { [[ $(api GET /workers | jpy "[w['state'] for w in d['workers'] if w['name'] == 'appliance-$HOST'][0]") == connected ]]; }
up() { connected && [[ $(appliance state) =~ ^(idle|running)$ ]]; }
wait_for "the appliance to register" 240 up
[[ $(lv_virsh domstate "$DOMAIN") == running ]] || fail "domain $DOMAIN is not running"
lv_virsh pool-refresh "$POOL" >/dev/null
[[ $(volumes) == 2 ]] || fail "volumes: $(lv_virsh vol-list "$POOL")"
[[ $(api GET /workers | jpy "[w['host'] for w in d['workers'] if w['name'] == 'appliance-$HOST'][0]") == "$HOST" ]] ||
  fail "the appliance's worker did not register for host $HOST"
# The config drive as the appliance read it: configuration, token, the extra file.
drive=$WORK/pool/$DOMAIN-cidata.img
MTOOLS_SKIP_CHECK=1 mtype -i "$drive" ::/ferry/config >"$WORK/drive-config"
grep -qx "coordinator = 10.0.2.2:$RPC_PORT" "$WORK/drive-config" && grep -qx "host = $HOST" "$WORK/drive-config" &&
  grep -qx "qmp-ssh = root@10.0.2.2:$SSHD_PORT" "$WORK/drive-config" || fail "the config drive's configuration: $(cat "$WORK/drive-config")"
MTOOLS_SKIP_CHECK=1 mtype -i "$drive" ::/ferry/known_hosts | grep -q "^\[10.0.2.2\]:$SSHD_PORT ssh-ed25519 " ||
  fail "the config drive lacks files.known_hosts"
[[ $(MTOOLS_SKIP_CHECK=1 mtype -i "$drive" ::/ferry/token | tr -d '\r\n') == fy_* ]] || fail "the config drive lacks the token"
"$FERRY" --coordinator "$API" host list | grep -E "^$HOST_ID +$HOST .*(idle|running)\s*$" >/dev/null ||
  fail "ferry host list does not show the appliance's state: $("$FERRY" --coordinator "$API" host list)"
"$FERRY" --coordinator "$API" host show "$HOST_ID" | grep -q "\"domain\":\"$DOMAIN\"" || fail "ferry host show lacks the appliance"
ok "deployed: $DOMAIN ($(lv_virsh dumpxml "$DOMAIN" | grep -o "domain type='[a-z]*'")) registered $((SECONDS - T0)) s after the request, state $(appliance state)"

# --- idle: shut down gracefully ---
stopped() { [[ $(appliance state) == stopped && $(lv_virsh domstate "$DOMAIN") == "shut off" ]]; }
wait_for "the idle appliance to stop" 150 stopped
grep -q "stopping" "$DATA/log" || fail "no graceful shutdown in the log"
grep -q "destroyed: it did not power off" "$DATA/log" && fail "it had to be destroyed: the ACPI shutdown did not work"
ok "idle for 15 s: shut down (ACPI) to stopped: $(appliance reason)"

# --- work queued for its host starts it again, and the job succeeds ---
# The appliance reported the host's VM while it ran (over SSH); the inventory stays.
[[ $(api GET "/vms?name=vm-$HOST" | jpy "len(d['vms'])") == 1 ]] || fail "vm-$HOST is not in the inventory: $(api GET /vms)"
[[ $(appliance state) == stopped ]] || fail "the appliance left stopped without work: $(appliance state)"
before=$(api GET /workers | jpy "[w['registered_at'] for w in d['workers'] if w['name'] == 'appliance-$HOST'][0]")
"$FERRY" init --repo "$WORK/repo" --chunk-size 1M >/dev/null
REPO=$(api POST /repositories "{\"name\": \"r\", \"location\": \"$WORK/repo\"}" | jpy 'd["id"]')
JOB=$(api POST /jobs "{\"name\": \"j\", \"repository\": $REPO, \"selection\": {\"vms\": [\"vm-$HOST\"]}, \"retries\": {\"count\": 0, \"interval_s\": 0}}" | jpy 'd["id"]')
qemu-img convert -U -O raw "$WORK/vm-d1-virtio0.qcow2" "$WORK/ref.raw"
T1=$SECONDS
S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
started() { [[ $(appliance state) =~ ^(starting|running|idle)$ && $(lv_virsh domstate "$DOMAIN") == running ]]; }
wait_for "queued work to start the appliance" 30 started
reregistered() {
  connected && [[ $(api GET /workers | jpy "[w['registered_at'] for w in d['workers'] if w['name'] == 'appliance-$HOST'][0]") != "$before" ]]
}
wait_for "the appliance's worker to register again" 240 reregistered
ok "a queued snapshot for $HOST started it again; re-registered after $((SECONDS - T1)) s"
wait_for "session $S to end" 300 session_ended "$S"
api GET "/sessions/$S" >"$WORK/s.json"
[[ $(jpy 'd["state"]' <"$WORK/s.json") == succeeded ]] ||
  { api GET "/sessions/$S/log" >&2; fail "session $S: $(jpy '[d["state"], d.get("reason")]' <"$WORK/s.json")"; }
api GET "/sessions/$S/log" >"$WORK/log.json"
wid=$(api GET /workers | jpy "[w['id'] for w in d['workers'] if w['name'] == 'appliance-$HOST'][0]")
grep -q "attempt 1 on worker $wid (host: worker on the VM's host)" "$WORK/log.json" ||
  fail "the appliance's worker $wid did not do the work: $(head -c 2000 "$WORK/log.json")"
grep -q "from nbds://10.0.2.2:" "$WORK/log.json" || fail "the disk was not read over NBD/TCP with TLS: $(head -c 2000 "$WORK/log.json")"
point=$(jpy 'd["snapshots"][0]["point_id"]' <"$WORK/s.json")
"$FERRY" restore --repo "$WORK/repo" --point "$point" --disk virtio0 --to "$WORK/restored.raw" 2>/dev/null
cmp -s "$WORK/restored.raw" "$WORK/ref.raw" || fail "the point does not restore bit-exact"
ok "the job succeeded $((SECONDS - T1)) s after its start (the appliance booted for it); point $point restores bit-exact"

# --- DELETE removes everything ---
api DELETE "/hosts/$HOST_ID/worker" >/dev/null
nothing_left "after DELETE"
[[ $(api GET "/hosts/$HOST_ID" | jpy 'd["appliance"]') == None ]] || fail "the host still shows an appliance"
ok "DELETE: domain, both volumes and the worker record are gone"
PASSED=1
