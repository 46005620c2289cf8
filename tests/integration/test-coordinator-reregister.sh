#!/usr/bin/env bash
# A worker that re-registers while its old connection is still open (a
# frozen process, a half-dead network path) must get its work on the new
# connection. The old connection's parked pull used to be woken first and
# take the work, whose answer then went nowhere: the session hung with the
# task "running" on a worker that never heard of it.
. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"

DATA=$WORK/coord
coord_init "$DATA"
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 \
  --heartbeat-interval-ms 500 --heartbeat-deadline-ms 5000
api POST /repositories '{"name": "main", "location": "/srv/ferry", "task_slots": 4}' >/dev/null
TOKEN2=$(api POST /workers '{"name": "w2"}' | jpy 'd["token"]')
printf '[{"token": "%s", "host": "h2", "platform": "libvirt", "cluster": "c1", "slots": 2, "vms": [{"name": "vm3", "uuid": "u3", "state": "running", "tags": [], "disks": [{"name": "sda", "size": 1073741824, "format": "qcow2"}, {"name": "sdb", "size": 1073741824, "format": "qcow2"}]}]}]\n' \
  "$TOKEN2" >"$WORK/w2.json"

registrations() { grep -c "worker w2 registered" "$DATA/log" || true; }

# The old process: connected, its pull parked for 30 s, then frozen.
sim_start old --workers "$WORK/w2.json" --pull-wait-ms 30000
wait_for "w2's first registration and inventory" 20 bash -c \
  "[[ \$(grep -c 'worker w2 registered' '$DATA/log') -ge 1 ]] && [[ \$(FERRY_TOKEN=$TOKEN '$FERRY' --coordinator $API vm list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)[\"vms\"]))') == 1 ]]"
sleep 1  # its long poll is parked now
kill -STOP "${SIM_PID[old]}"
on_exit "kill -CONT ${SIM_PID[old]} 2>/dev/null"
ok "old w2 process frozen with its connection open"

# The same worker again, from a new process: a second registration.
sim_start new --workers "$WORK/w2.json" --task-ms 200 --pull-wait-ms 1000
wait_for "w2's second registration" 20 bash -c "[[ \$(grep -c 'worker w2 registered' '$DATA/log') -ge 2 ]]"
ok "w2 re-registered ($(registrations) registrations) while the old connection is open"

JOB=$(api POST /jobs '{"name": "vm3", "repository": 1, "selection": {"vms": ["vm3"]}, "retries": {"count": 0, "interval_s": 0}}' | jpy 'd["id"]')
S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
wait_for "session $S to end" 20 session_ended "$S"
api GET "/sessions/$S" >"$WORK/s.json"
[[ $(jpy 'd["state"]' <"$WORK/s.json") == succeeded ]] || fail "session $S: $(jpy 'd["state"], d["reason"]' <"$WORK/s.json")"
grep -Eq "s[0-9]+\.[0-9]+ snapshot vm3" "$WORK/sim-new.log" || fail "the new process never got the snapshot"
ok "the snapshot and both disks went to the new connection; session $S succeeded"
kill -CONT "${SIM_PID[old]}"; kill -9 "${SIM_PID[old]}"; wait "${SIM_PID[old]}" 2>/dev/null || true
