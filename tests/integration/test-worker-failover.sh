#!/usr/bin/env bash
# ferry-worker under failure (issue 11), real QEMU and processes:
#  1. cluster tier for real: host A's worker has one slot, so the second disk
#     of its VM goes to host B's worker, which reads A's export over TCP with
#     TLS-PSK; the point restores bit-exact.
#  2. kill -9 of the worker reading a disk, then of the snapshot holder, mid
#     disk: the work is reassigned (a new snapshot when the holder died), the
#     point is correct, and nothing Ferry made is left in the VM's QEMU.
#  3. the coordinator killed -9 and restarted mid-session on the same ports:
#     the workers re-register with their running work and the session ends
#     succeeded.
. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"

MiB=$((1024 * 1024))
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
API_PORT=$(free_port) RPC_PORT=$(free_port)
DATA=$WORK/coord
COORD_ARGS=(--listen 127.0.0.1:$API_PORT --rpc-listen 127.0.0.1:$RPC_PORT --heartbeat-interval-ms 300 --heartbeat-deadline-ms 3000)
coord_init "$DATA"
coord_start "$DATA" "${COORD_ARGS[@]}"
"$FERRY" init --repo "$WORK/repo" --chunk-size 1M >/dev/null
api POST /repositories "{\"name\": \"main\", \"location\": \"$WORK/repo\", \"task_slots\": 8}" >/dev/null

mkdir -p "$WORK/qmp-a" "$WORK/qmp-b"
make_data_disk "$WORK/a1-virtio0.qcow2" qcow2 $((40 * MiB)) 11
make_data_disk "$WORK/a1-virtio1.raw" raw $((40 * MiB)) 12
VM_NAME=vm-a1 vm_start "$WORK/vm-a1" "virtio0=$WORK/a1-virtio0.qcow2" "virtio1=$WORK/a1-virtio1.raw"
ln -s "$WORK/vm-a1/qmp.sock" "$WORK/qmp-a/101.qmp"

worker_token wa >"$WORK/wa.token"
worker_token wb >"$WORK/wb.token"
# Reads capped at 8 MiB/s: a 40 MiB disk (about 16 MiB of data) takes a
# couple of seconds, long enough to kill things in the middle.
start_a() {
  worker_start a --token-file "$WORK/wa.token" --host host-a --cluster c1 --qmp-dir "$WORK/qmp-a" --slots 1 \
    --export-host 127.0.0.1 --export-listen 127.0.0.1 --runtime-dir "$WORK/run-a" --scratch-dir "$WORK/scratch-a" \
    --rate-limit "${RATE:-5M}" --inventory-interval 1s
}
start_b() {
  worker_start b --token-file "$WORK/wb.token" --host host-b --cluster c1 --qmp-dir "$WORK/qmp-b" --slots 2 \
    --runtime-dir "$WORK/run-b" --scratch-dir "$WORK/scratch-b" --rate-limit "${RATE:-5M}" --inventory-interval 1s
}
start_a; start_b
vm_count() { [[ $(api GET /vms | jpy "len(d['vms'])") -ge $1 ]]; }
wait_for "vm-a1 in the inventory" 30 vm_count 1

JOB=$(api POST /jobs '{"name": "a1", "repository": 1, "selection": {"vms": ["vm-a1"]}, "retries": {"count": 3, "interval_s": 0}}' | jpy 'd["id"]')
take_refs() {
  snapshot_copy "$WORK/a1-virtio0.qcow2" "$WORK/ref-virtio0" "$WORK/vm-a1" virtio0
  snapshot_copy "$WORK/a1-virtio1.raw" "$WORK/ref-virtio1" "$WORK/vm-a1" virtio1
}
finish_session() {  # S: waits, checks succeeded, restores both disks bit-exact, no leftovers
  wait_for "session $1 to end" 180 session_ended "$1"
  api GET "/sessions/$1" >"$WORK/s$1.json"
  [[ $(jpy 'd["state"]' <"$WORK/s$1.json") == succeeded ]] ||
    { api GET "/sessions/$1/log" >&2; fail "session $1: $(jpy '[d["state"], d.get("reason")]' <"$WORK/s$1.json")"; }
  POINT=$(jpy 'd["snapshots"][0]["point_id"]' <"$WORK/s$1.json")
  local disk
  for disk in virtio0 virtio1; do
    rm -f "$WORK/restored"
    "$FERRY" restore --repo "$WORK/repo" --point "$POINT" --disk $disk --to "$WORK/restored" 2>/dev/null
    cmp -s "$WORK/restored" "$WORK/ref-$disk" || fail "session $1: $disk (point $POINT) does not restore bit-exact"
  done
  "$FERRY" verify --repo "$WORK/repo" --point "$POINT" >/dev/null 2>&1 || fail "point $POINT does not verify"
  [[ -z $(ferry_objects "$WORK/vm-a1") ]] || fail "after session $1 the VM's QEMU still has $(ferry_objects "$WORK/vm-a1")"
  [[ $(vm_qmp "$WORK/vm-a1" query-nbd-server 2>/dev/null || echo none) != *'"running": true'* ]] || true
}
task_on() {  # S WORKER_ID: a running task of session S on that worker with data read
  api GET "/sessions/$1" | jpy "[t for t in d['tasks'] if t['state'] == 'running' and t['worker_id'] == $2 and t['bytes_done'] > 0]" |
    grep -q '"id"'
}
WA=$(api GET /workers | jpy "[w['id'] for w in d['workers'] if w['name'] == 'wa'][0]")
WB=$(api GET /workers | jpy "[w['id'] for w in d['workers'] if w['name'] == 'wb'][0]")

# --- 1. cluster tier over TCP + TLS ---
take_refs
S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
finish_session "$S"
python3 - "$WORK/s$S.json" "$WA" "$WB" <<'PY' || fail "tiers: $(cat "$WORK/s$S.json")"
import json, sys
s = json.load(open(sys.argv[1])); wa, wb = int(sys.argv[2]), int(sys.argv[3])
tiers = sorted((t["worker_id"], t["tier"]) for t in s["tasks"])
assert tiers == sorted([(wa, "host"), (wb, "cluster")]), tiers
PY
api GET "/sessions/$S/log" >"$WORK/log$S.json"
grep -q "nbds://127.0.0.1:" "$WORK/log$S.json" || fail "host B did not read over TCP with TLS: $(jpy "chr(10).join(l['message'] for l in d['log'])" <"$WORK/log$S.json")"
grep -Eq "tls_psk_key|[0-9a-f]{64}" "$WORK/log$S.json" "$WORK/worker-a.log" "$WORK/worker-b.log" && fail "a TLS key was logged"
ok "cluster tier: host B's worker read host A's export over TCP with TLS-PSK; point $POINT bit-exact"

# --- 2a. kill -9 the worker reading the other disk, mid-disk ---
vm_write "$WORK/vm-a1" virtio0 0x61 $((8 * MiB)) $((16 * MiB))
vm_write "$WORK/vm-a1" virtio1 0x61 $((8 * MiB)) $((16 * MiB))
take_refs
S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
wait_for "worker B to be reading" 60 task_on "$S" "$WB"
worker_kill9 b
ok "worker B killed -9 mid-disk"
start_b
finish_session "$S"
api GET "/sessions/$S/log" | grep -Eq "requeued|re-registered without it|unreachable" || fail "no sign of the reassignment in the session log"
ok "the disk was reassigned; session $S succeeded, point $POINT bit-exact, no leftovers in QEMU"

# --- 2b. kill -9 the snapshot holder mid-disk ---
vm_write "$WORK/vm-a1" virtio0 0x62 $((2 * MiB)) $((16 * MiB))
vm_write "$WORK/vm-a1" virtio1 0x62 $((2 * MiB)) $((16 * MiB))
take_refs
S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
wait_for "worker A to be reading" 60 task_on "$S" "$WA"
worker_kill9 a
ok "worker A (the snapshot holder) killed -9 mid-disk"
start_a
finish_session "$S"
api GET "/sessions/$S/log" | grep -q "snapshot lost" || fail "the session log does not say the snapshot was lost"
ok "a new snapshot was taken; session $S succeeded, point $POINT bit-exact, the dead holder's snapshot removed from QEMU"

# --- 2c. the snapshot holder frozen past the deadline, then back ---
# Its snapshot is lost and must be taken again; when it comes back it still
# holds the old one, which the coordinator tells it to drop (dropSnapshots).
vm_write "$WORK/vm-a1" virtio0 0x64 $((4 * MiB)) $((16 * MiB))
vm_write "$WORK/vm-a1" virtio1 0x64 $((4 * MiB)) $((16 * MiB))
take_refs
S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
wait_for "worker A to be reading" 60 task_on "$S" "$WA"
kill -STOP "${WORKER_PID[a]}"
on_exit "kill -CONT ${WORKER_PID[a]} 2>/dev/null"
wait_for "worker A to be declared unreachable" 30 grep -q "worker $WA unreachable" "$DATA/log"
kill -CONT "${WORKER_PID[a]}"
ok "worker A frozen past the heartbeat deadline, then resumed"
finish_session "$S"
grep -q "no longer counts it as this worker's" "$WORK/worker-a.log" || fail "worker A did not drop its stale snapshot"
ok "worker A dropped the stale snapshot and took a new one; session $S succeeded, point $POINT bit-exact, no leftovers"

# --- 3. the coordinator killed and restarted mid-session ---
vm_write "$WORK/vm-a1" virtio0 0x63 $((20 * MiB)) $((16 * MiB))
vm_write "$WORK/vm-a1" virtio1 0x63 $((20 * MiB)) $((16 * MiB))
take_refs
S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
wait_for "a disk being read" 60 task_on "$S" "$WA"
regs_before=$(grep -c "registered" "$DATA/log" || true)
coord_kill9
ok "coordinator killed -9 mid-session"
coord_start "$DATA" "${COORD_ARGS[@]}"
finish_session "$S"
[[ $(grep -c "registered" "$DATA/log") -gt $regs_before ]] || fail "the workers did not re-register"
grep -q "registration failed\|registered" "$WORK/worker-a.log" || true
ok "the workers re-registered with the restarted coordinator; session $S succeeded, point $POINT bit-exact"
