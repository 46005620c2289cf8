#!/usr/bin/env bash
# Bandwidth caps (issue 12, item 4; docs/throttling.md), through the API, on a
# real coordinator and ferry-worker: a worker capped at 6 MiB/s, two disk
# tasks of two VMs running at once: over a 10 s window the worker's tasks
# together stay within 10% of the cap, and each gets a fair part of it. Then a
# repository capped at 4 MiB/s with the worker uncapped: its tasks share that.
# Disks hold random data, so what is sent is what is read.
. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"
MiB=$((1024 * 1024))
DATA=$WORK/coord
coord_init "$DATA"
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0
"$FERRY" init --repo "$WORK/repo1" --chunk-size 1M >/dev/null
"$FERRY" init --repo "$WORK/repo2" --chunk-size 1M >/dev/null
api POST /repositories "{\"name\": \"r1\", \"location\": \"$WORK/repo1\"}" >/dev/null
api POST /repositories "{\"name\": \"r2\", \"location\": \"$WORK/repo2\"}" >/dev/null
mkdir -p "$WORK/qmp"
for i in 1 2; do
  head -c $((64 * MiB)) /dev/urandom >"$WORK/vm$i.raw"
  VM_NAME=vm$i vm_start "$WORK/vm-vm$i" "virtio0=$WORK/vm$i.raw"
  ln -sf "$WORK/vm-vm$i/qmp.sock" "$WORK/qmp/10$i.qmp"
done
W=$(api POST /workers '{"name": "w1", "bandwidth": "6MiB/s"}')
[[ $(jpy 'd["bandwidth"]' <<<"$W") == "6MiB/s" ]] || fail "worker bandwidth: $W"
jpy 'd["token"]' <<<"$W" >"$WORK/w1.token"
worker_start w1 --token-file "$WORK/w1.token" --host host-a --qmp-dir "$WORK/qmp" --slots 2 \
  --runtime-dir "$WORK/run" --scratch-dir "$WORK/scratch" --threads 1
vm_count() { [[ $(api GET /vms | jpy "len(d['vms'])") -ge 2 ]]; }
wait_for "the worker and its VMs" 30 vm_count

# Bad caps are refused, naming the field and the part.
expect_http() {  # STATUS METHOD PATH BODY WANT
  local out; out=$(api_status "$2" "$3" "$4")
  [[ ${out%% *} == "$1" && $out == *"$5"* ]] || fail "$2 $3 $4: $out"
}
expect_http 400 PATCH /workers/1 '{"bandwidth": "50MB/x"}' "bandwidth"
expect_http 400 PATCH /repositories/1 '{"bandwidth": "50MB/s 25:00-26:00"}' "bandwidth"
ok "bad bandwidth caps are refused with a message naming the field"

# SESSION CAP: samples the session's bytes done each second; over the 10 s
# from 3 s in, the tasks together within 10% of CAP, each 30..70% of it.
measure() {
  local s=$1 cap=$2 t0 samples=()
  t0=$SECONDS
  wait_for "session $s's two tasks running" 30 bash -c "[[ \$(python3 - '$API' '$TOKEN' <<'PY'
import json, sys, urllib.request
r = urllib.request.Request(sys.argv[1] + '/api/v1/sessions/$s', headers={'Authorization': 'Bearer ' + sys.argv[2]})
d = json.load(urllib.request.urlopen(r))
print(sum(1 for t in d['tasks'] if t['state'] == 'running'))
PY
) == 2 ]]"
  sleep 3
  python3 - "$API" "$TOKEN" "$s" "$cap" <<'PY' || fail "session $s did not keep to its cap"
import json, sys, time, urllib.request
api, token, s, cap = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
def done():
    r = urllib.request.Request(f"{api}/api/v1/sessions/{s}", headers={"Authorization": "Bearer " + token})
    d = json.load(urllib.request.urlopen(r))
    return time.monotonic(), {t["vm"]: t["bytes_done"] for t in d["tasks"]}
t0, a = done()
time.sleep(10)
t1, b = done()
per = {vm: b[vm] - a.get(vm, 0) for vm in b}
total = sum(per.values()) / (t1 - t0)
print(f"session {s}: {total / 2**20:.2f} MiB/s over {t1 - t0:.1f} s against a cap of {cap / 2**20:.2f} MiB/s; "
      + ", ".join(f"{vm} {v / 2**20:.1f} MiB" for vm, v in sorted(per.items())))
assert abs(total - cap) <= 0.10 * cap, (total, cap)
for vm, v in per.items():
    assert 0.30 <= v / sum(per.values()) <= 0.70, per
PY
}
J1=$(api POST /jobs '{"name": "j1", "repository": 1, "selection": {"vms": ["vm1", "vm2"]}}' | jpy 'd["id"]')
S1=$(api POST "/jobs/$J1/start" | jpy 'd["session"]')
measure "$S1" $((6 * MiB)) | tee "$WORK/m1"
ok "worker capped at 6 MiB/s through the API: $(cat "$WORK/m1")"
wait_for "session $S1 to end" 120 session_ended "$S1"
[[ $(session_state "$S1") == succeeded ]] || fail "session $S1: $(session_state "$S1")"

# The same through the CLI.
"$FERRY" --coordinator "$API" worker set 1 --bandwidth unlimited >/dev/null
"$FERRY" --coordinator "$API" repo set 2 --bandwidth 4MiB/s | jpy 'd["bandwidth"]' | grep -qx "4MiB/s" ||
  fail "repository bandwidth through the CLI"
[[ $(api GET /workers/1 | jpy 'd["bandwidth"]') == unlimited ]] || fail "worker bandwidth not removed"
J2=$(api POST /jobs '{"name": "j2", "repository": 2, "selection": {"vms": ["vm1", "vm2"]}}' | jpy 'd["id"]')
S2=$(api POST "/jobs/$J2/start" | jpy 'd["session"]')
measure "$S2" $((4 * MiB)) | tee "$WORK/m2"
ok "repository capped at 4 MiB/s, shared by its two tasks: $(cat "$WORK/m2")"
wait_for "session $S2 to end" 120 session_ended "$S2"
[[ $(session_state "$S2") == succeeded ]] || fail "session $S2: $(session_state "$S2")"
grep -q "worker bandwidth cap: 6MiB/s (the coordinator's)" "$WORK/worker-w1.log" || fail "the worker did not log its cap"
worker_stop w1
