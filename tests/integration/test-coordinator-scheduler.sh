#!/usr/bin/env bash
# The coordinator's scheduler against simulated workers over the real RPC:
#  1. locality tiers (host, else cluster, else any) with their reasons, disk
#     exclusion, retries, worker and repository slot limits;
#  2. a worker killed mid-task: its work is reassigned, its snapshot re-taken;
#  3. the coordinator killed (-9) mid-session and restarted: the session
#     finishes and no record is lost.
. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"

DATA=$WORK/coord
coord_init "$DATA"
# Deadlines short enough to see a killed worker in seconds, long enough that a
# loaded CI machine (QEMU tests in parallel) does not starve a live one past it.
HB=(--heartbeat-interval-ms 500 --heartbeat-deadline-ms 3000)
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 "${HB[@]}"
ok "coordinator up at $API, RPC $RPC"

api POST /repositories '{"name": "main", "location": "/srv/ferry", "task_slots": 3}' >/dev/null
declare -A WTOKEN
for w in w1 w2 w3 w4; do WTOKEN[$w]=$(api POST /workers "{\"name\": \"$w\"}" | jpy 'd["token"]'); done

# Topology: cluster c1 = h1 (w1), h2 (w2), h3 (w3, gone before the job);
# cluster c2 = h4 (w4).
worker_json() {  # NAME HOST CLUSTER SLOTS VMS-JSON
  printf '{"token": "%s", "host": "%s", "platform": "libvirt", "cluster": "%s", "slots": %s, "vms": %s}' \
    "${WTOKEN[$1]}" "$2" "$3" "$4" "$5"
}
disk() { printf '{"name": "%s", "size": 1073741824, "format": "qcow2"}\n' "$1"; }
vm() { local name=$1; shift; local d; d=$(for x in "$@"; do disk "$x"; done | paste -sd,); printf '{"name": "%s", "uuid": "uuid-%s", "state": "running", "tags": ["prod"], "disks": [%s]}' "$name" "$name" "$d"; }
W1=$(worker_json w1 h1 c1 2 "[$(vm vm1 vda vdb), $(vm vm2 vda)]")
W2=$(worker_json w2 h2 c1 2 "[$(vm vm3 sda sdb sdc)]")
W3=$(worker_json w3 h3 c1 2 "[$(vm vm5 vda vdb)]")
W4=$(worker_json w4 h4 c2 2 "[$(vm vm4 vda)]")
echo "[$W3]" >"$WORK/w3.json"
echo "[$W1, $W2, $W4]" >"$WORK/main.json"

# w3 reports h3's inventory, then goes away: h3 has VMs and no live worker.
sim_start w3 --workers "$WORK/w3.json" --quiet
wait_for "h3's inventory" 20 bash -c "[[ \$(FERRY_TOKEN=$TOKEN '$FERRY' --coordinator $API vm list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)[\"vms\"]))') == 1 ]]"
kill -TERM "${SIM_PID[w3]}"; wait "${SIM_PID[w3]}" || true
wait_for "w3 disconnected" 10 bash -c "[[ \$(FERRY_TOKEN=$TOKEN '$FERRY' --coordinator $API worker show w3 | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"state\"])') != connected ]]"

sim_start main --workers "$WORK/main.json" --task-ms 400 --fail vm2/vda:1 --report "$WORK/main-report.json"
wait_for "all inventory" 20 bash -c "[[ \$(FERRY_TOKEN=$TOKEN '$FERRY' --coordinator $API vm list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)[\"vms\"]))') == 5 ]]"
ok "inventory: 5 VMs on 4 hosts"
# Objects by name, the coordinator from the environment, options after the words.
[[ $(FERRY_TOKEN=$TOKEN FERRY_COORDINATOR=$API "$FERRY" vm show vm4 --json | jpy 'd["name"], d["host"]') == "('vm4', 'h4')" ]] \
  || fail "ferry vm show vm4"
[[ $(FERRY_TOKEN=$TOKEN FERRY_COORDINATOR=$API "$FERRY" host show h4 | jpy 'd["name"], d["cluster"]') == "('h4', 'c2')" ]] \
  || fail "ferry host show h4"
rc=0; out=$(FERRY_TOKEN=$TOKEN FERRY_COORDINATOR=$API "$FERRY" worker show nobody 2>&1) || rc=$?
[[ $rc == 3 && $out == *"no worker named 'nobody'"* ]] || fail "worker show nobody: exit $rc: $out"
ok "vm show vm4, host show h4 by name; an unknown name is exit 3"

JOB=$(api POST /jobs '{"name": "all", "repository": 1, "selection": {"tags": ["prod"]},
  "exclude_disks": [{"vm": "vm3", "disk": "sdc"}], "retries": {"count": 2, "interval_s": 0}}' | jpy 'd["id"]')
S1=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
wait_for "session $S1 to end" 60 session_ended "$S1"
api GET "/sessions/$S1" >"$WORK/s1.json"
[[ $(jpy 'd["state"]' <"$WORK/s1.json") == succeeded ]] || fail "session 1: $(jpy 'd["state"], d["reason"]' <"$WORK/s1.json")"
[[ $(jpy 'len(d["tasks"])' <"$WORK/s1.json") == 8 ]] || fail "expected 8 disk tasks (vm3/sdc excluded)"
[[ $(api GET "/points?job=$JOB" | jpy 'len(d["points"])') == 5 ]] || fail "expected one restore point per VM"
ok "session $S1 succeeded: 8 disk tasks, 5 restore points, vm3/sdc excluded"

# Statistics: the simulator reports a slow source (source 90%, compute 35%,
# target 20% busy); every task, the session and `ferry session show` name it.
[[ $(jpy 'sorted({t["bottleneck"] for t in d["tasks"]}) == ["source"] and d["stats"]["bottleneck"] == "source" and d["tasks"][0]["busy"] == {"source": 90.0, "compute": 35.0, "network": None, "target": 20.0}' <"$WORK/s1.json") == True ]] \
  || fail "session 1's statistics: $(jpy '[(t["busy"], t["bottleneck"]) for t in d["tasks"]], d["stats"]' <"$WORK/s1.json")"
FERRY_TOKEN=$TOKEN "$FERRY" --coordinator "$API" session show "$S1" >"$WORK/s1.txt"
grep -q '^  bottleneck: source$' "$WORK/s1.txt" && grep -Eq 'vm1/vda +succeeded .* 90% +35% +- +20% +source' "$WORK/s1.txt" \
  || fail "session show names no bottleneck:
$(cat "$WORK/s1.txt")"
ok "statistics: each task and the session name the source as the bottleneck"

# Placement: each task's tier matches where it ran, and work left its host
# only for the recorded reason.
api GET /workers >"$WORK/workers.json"
python3 - "$WORK/s1.json" "$WORK/workers.json" "$WORK/main-report.json" <<'PY' || fail "placement check"
import json, sys
s = json.load(open(sys.argv[1])); workers = {w["id"]: w for w in json.load(open(sys.argv[2]))["workers"]}
vm_host = {"vm1": "h1", "vm2": "h1", "vm3": "h2", "vm5": "h3", "vm4": "h4"}
cluster = {"h1": "c1", "h2": "c1", "h3": "c1", "h4": "c2"}
tiers = {}
for t in s["tasks"]:
    w = workers[t["worker_id"]]; host = vm_host[t["vm"]]
    tiers[t["tier"]] = tiers.get(t["tier"], 0) + 1
    where = f'{t["vm"]}/{t["disk"]} on {w["name"]}@{w["host"]} ({t["tier"]}: {t["tier_reason"]})'
    if t["tier"] == "host": assert w["host"] == host, where
    if t["tier"] == "cluster": assert w["host"] != host and cluster[w["host"]] == cluster[host], where
    if t["tier"] == "any": assert cluster[w["host"]] != cluster[host] and "none free in its cluster" in t["tier_reason"], where
    if t["vm"] == "vm5": assert t["tier"] in ("cluster", "any") and "h3 unreachable" in t["tier_reason"], where
    if t["tier"] != "host" and t["vm"] != "vm5": assert "busy" in t["tier_reason"], where
    print("  " + where)
assert tiers.get("cluster", 0) >= 1, tiers
# vm2/vda failed once and was retried.
vm2 = [t for t in s["tasks"] if t["vm"] == "vm2"][0]
assert vm2["attempt"] == 2 and vm2["state"] == "succeeded", vm2
# Repository slots (3): never more than 3 disk tasks at once, by the records.
events = []
for t in s["tasks"]:
    events += [(t["started_at"], 1), (t["ended_at"], -1)]
running = peak = 0
for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
    running += delta; peak = max(peak, running)
assert peak <= 3, f"repository slots exceeded: {peak} at once"
print(f"  tiers {tiers}, peak concurrent disk tasks {peak} (repository slots 3)")
PY
kill -TERM "${SIM_PID[main]}"; wait "${SIM_PID[main]}" || true
python3 - "$WORK/main-report.json" <<'PY' || fail "worker slot check"
import json, sys
for w in json.load(open(sys.argv[1]))["workers"]:
    assert w["max_concurrent_disk_tasks"] <= w["slots"], w["host"]
    print(f'  {w["host"]}: at most {w["max_concurrent_disk_tasks"]} of {w["slots"]} slots')
PY
ok "locality tiers, reasons, retries and slot limits hold"

# 2. A worker killed mid-task: w2 (h2) dies while reading vm3; its tasks go
# back to the queue, the snapshot it held is re-taken, and w1 (same cluster)
# finishes the job.
echo "[$W1, $W4]" >"$WORK/a.json"
echo "[$W2]" >"$WORK/b.json"
sim_start a --workers "$WORK/a.json" --task-ms 300
sim_start b --workers "$WORK/b.json" --task-ms 5000
wait_for "w1, w2 and w4 connected" 20 bash -c "[[ \$(FERRY_TOKEN=$TOKEN '$FERRY' --coordinator $API status | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"workers_connected\"])') == 3 ]]"
JOB2=$(api POST /jobs '{"name": "vm3", "repository": 1, "selection": {"vms": ["vm3"]}, "retries": {"count": 0, "interval_s": 0}}' | jpy 'd["id"]')
S2=$(api POST "/jobs/$JOB2/start" | jpy 'd["session"]')
wait_for "vm3's tasks running on w2" 20 bash -c "[[ \$(FERRY_TOKEN=$TOKEN '$FERRY' --coordinator $API session show $S2 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"totals\"][\"running\"])') -ge 1 ]]"
kill -9 "${SIM_PID[b]}"
ok "killed w2 (pid ${SIM_PID[b]}) mid-task"
wait_for "session $S2 to end" 60 session_ended "$S2"
api GET "/sessions/$S2" >"$WORK/s2.json"
[[ $(jpy 'd["state"]' <"$WORK/s2.json") == succeeded ]] || fail "session 2: $(jpy 'd["state"], d["reason"]' <"$WORK/s2.json")"
python3 - "$WORK/s2.json" <<'PY' || fail "reassignment check"
import json, sys
s = json.load(open(sys.argv[1]))
# w1 (same cluster) takes them; w4 (other cluster) only when w1 is full.
for t in s["tasks"]:
    print(f'  {t["vm"]}/{t["disk"]}: worker {t["worker_id"]}, attempt {t["attempt"]} ({t["tier"]}: {t["tier_reason"]})')
    assert t["worker_id"] != 2 and "h2 unreachable" in t["tier_reason"], t
    assert (t["worker_id"], t["tier"]) in ((1, "cluster"), (3, "any"), (4, "any")), t
assert s["snapshots"][0]["worker_id"] == 1, s["snapshots"]
PY
api GET "/sessions/$S2/log" >"$WORK/s2-log.json"
grep -q "requeued: worker unreachable" "$WORK/s2-log.json" || fail "no requeue in the session log"
grep -q "snapshot lost" "$WORK/s2-log.json" || fail "no lost snapshot in the session log"
[[ $(api GET /workers/2 | jpy 'd["state"]') == unreachable ]] || fail "w2 not marked unreachable"
ok "w2 marked unreachable; its snapshot and tasks moved to w1 (cluster tier, w4 only when w1 was full); session succeeded"
kill -9 "${SIM_PID[a]}"; wait "${SIM_PID[a]}" 2>/dev/null || true  # no report needed

# 3. The coordinator killed mid-session and restarted on the same ports.
sim_start c --workers "$WORK/main.json" --task-ms 4000
wait_for "workers back" 20 bash -c "[[ \$(FERRY_TOKEN=$TOKEN '$FERRY' --coordinator $API status | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"workers_connected\"])') == 3 ]]"
S3=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
wait_for "a task done in session $S3" 90 bash -c "[[ \$(FERRY_TOKEN=$TOKEN '$FERRY' --coordinator $API session show $S3 --json | python3 -c 'import json,sys; t=json.load(sys.stdin)[\"totals\"]; print(t[\"succeeded\"] >= 1 and t[\"running\"] >= 1)') == True ]]"
BEFORE_LOG=$(api GET "/sessions/$S3/log?limit=100000" | jpy 'len(d["log"])')
BEFORE_SESSIONS=$(api GET /sessions | jpy 'len(d["sessions"])')
API_PORT=${API##*:}
[[ $(session_state "$S3") == running ]] || fail "session $S3 ended before the kill; the test needs longer tasks"
coord_kill9
ok "coordinator killed -9 mid-session ($BEFORE_LOG log lines so far)"
coord_start "$DATA" --listen "127.0.0.1:$API_PORT" --rpc-listen "$RPC" "${HB[@]}"
wait_for "session $S3 to end after the restart" 60 session_ended "$S3"
api GET "/sessions/$S3" >"$WORK/s3.json"
[[ $(jpy 'd["state"]' <"$WORK/s3.json") == succeeded ]] || fail "session 3: $(jpy 'd["state"], d["reason"]' <"$WORK/s3.json")"
[[ $(jpy 'len(d["tasks"])' <"$WORK/s3.json") == 8 ]] || fail "session 3 lost tasks"
[[ $(api GET /sessions | jpy 'len(d["sessions"])') == "$BEFORE_SESSIONS" ]] || fail "sessions lost or added"
AFTER_LOG=$(api GET "/sessions/$S3/log?limit=100000" | jpy 'len(d["log"])')
((AFTER_LOG > BEFORE_LOG)) || fail "session log shrank: $BEFORE_LOG -> $AFTER_LOG"
api GET "/sessions/$S3/log?limit=100000" | grep -q "coordinator restarted" || { tail -20 "$DATA/log"; api GET "/sessions/$S3/log?limit=100000" | jpy '"\n".join(e["at"] + " " + e["message"] for e in d["log"])'; fail "restart not in the session log"; }
[[ $(api GET "/points?job=$JOB" | jpy 'len([p for p in d["points"] if p["session_id"] == '"$S3"'])') == 5 ]] || fail "session 3: expected 5 points, one per VM"
ok "after kill -9 and restart, session $S3 succeeded with all 8 tasks and 5 points; nothing lost"
