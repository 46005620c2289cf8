#!/usr/bin/env bash
# The coordinator's database on a file system that fills up mid-session:
# the coordinator stops with a clear error and the environment exit code (5)
# instead of scheduling from memory the file no longer matches; after space
# is freed and it is restarted on the same data, the session finishes and
# nothing that was stored is lost.
. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"

mkdir -p "$WORK/full"
if ! mount -t tmpfs -o size=16m tmpfs "$WORK/full" 2>/dev/null; then
  echo "skip: cannot mount tmpfs here"
  exit 77
fi
on_exit "umount -l '$WORK/full' 2>/dev/null"

DATA=$WORK/full/coord
coord_init "$DATA"
HB=(--heartbeat-interval-ms 500 --heartbeat-deadline-ms 10000)
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 "${HB[@]}"
api POST /repositories '{"name": "main", "location": "/srv/ferry", "task_slots": 16}' >/dev/null
# 10 workers on 10 hosts, 20 VMs each with 2 disks: 400 disk tasks.
python3 - "$WORK/workers.json" <<PY
import json, sys, urllib.request
def post(path, body):
    req = urllib.request.Request("$API/api/v1" + path, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": "Bearer $TOKEN", "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=30))
workers = []
for w in range(10):
    token = post("/workers", {"name": f"w{w}"})["token"]
    vms = [{"name": f"vm{w}-{v}", "uuid": f"u{w}-{v}", "state": "running", "tags": ["all"],
            "disks": [{"name": d, "size": 1 << 30, "format": "qcow2"} for d in ("vda", "vdb")]} for v in range(20)]
    workers.append({"token": token, "host": f"h{w}", "platform": "libvirt", "cluster": "c", "slots": 2, "vms": vms})
json.dump(workers, open(sys.argv[1], "w"))
PY
sim_start sim --workers "$WORK/workers.json" --task-ms 150 --quiet
wait_for "inventory of 200 VMs" 30 bash -c "[[ \$(FERRY_TOKEN=$TOKEN '$FERRY' --coordinator $API status | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"vms\"])') == 200 ]]"
JOB=$(api POST /jobs '{"name": "all", "repository": 1, "selection": {"tags": ["all"]}, "retries": {"count": 0, "interval_s": 0}}' | jpy 'd["id"]')
S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
succeeded() { api GET "/sessions/$S" | jpy 'd["totals"]["succeeded"]'; }
wait_for "some tasks done" 30 bash -c "(( \$(FERRY_TOKEN=$TOKEN '$FERRY' --coordinator $API session show $S --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"totals\"][\"succeeded\"])') >= 20 ))"
BEFORE=$(succeeded)
ok "session $S running, $BEFORE of 400 disk tasks done"

# Fill the file system; the next commits cannot be stored.
dd if=/dev/zero of="$WORK/full/filler" bs=64k 2>/dev/null || true
wait_for "the coordinator to stop" 60 bash -c "! kill -0 $COORD_PID 2>/dev/null"
rc=0; wait "$COORD_PID" || rc=$?
[[ $rc == 5 ]] || { tail -20 "$DATA/log"; fail "coordinator exit code $rc, expected 5 (environment)"; }
grep -q "failed: .*full.*stopping so that a restart rebuilds the state" "$DATA/log" ||
  { tail -20 "$DATA/log"; fail "no clear disk-full error in the log"; }
ok "disk full: the coordinator stopped with exit code 5 and said why: $(grep -o 'committing to the database failed: [^;]*\|recording the result of [^;]*' "$DATA/log" | head -1)"

# Space back, same data, same ports: the session resumes and ends.
rm -f "$WORK/full/filler"
API_PORT=${API##*:}
coord_start "$DATA" --listen "127.0.0.1:$API_PORT" --rpc-listen "$RPC" "${HB[@]}"
wait_for "session $S to end after the restart" 90 session_ended "$S"
api GET "/sessions/$S" >"$WORK/s.json"
[[ $(jpy 'd["state"]' <"$WORK/s.json") == succeeded ]] || fail "session $S: $(jpy 'd["state"], d["reason"]' <"$WORK/s.json")"
AFTER=$(jpy 'd["totals"]["succeeded"]' <"$WORK/s.json")
((AFTER == 400)) || fail "expected 400 succeeded disk tasks, have $AFTER"
((AFTER >= BEFORE)) || fail "succeeded tasks went from $BEFORE to $AFTER"
[[ $(api GET "/points?job=$JOB" | jpy 'len(d["points"])') == 200 ]] || fail "expected 200 restore points"
ok "after freeing space and a restart, session $S succeeded: 400 disk tasks, 200 points, nothing lost"
