#!/usr/bin/env bash
# The repository lifecycle of a coordinator job (issue 14) with real
# processes: a coordinator, a ferry-worker daemon, a QEMU VM, a local
# repository. The job keeps 2 points (keep_last 2); after each session the
# coordinator applies it, GCs (--gc-window 0) and measures space. A point
# locked through the API survives retention, DELETE and a kill -9 and
# restart of the coordinator. A health check (POST /jobs/{id}/check) finds a
# damaged chunk and marks the points that use it; the next backup stores
# the chunk again, and the next check is clean. Every point the job keeps
# verifies and restores bit-exact.
. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"

MiB=$((1024 * 1024))
DATA=$WORK/coord
REPO=$WORK/repo
start_coordinator() {  # [RPC ADDRESS]: the worker's, on a restart
  coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen "${1:-127.0.0.1:0}" \
    --heartbeat-interval-ms 500 --heartbeat-deadline-ms 4000 --gc-window 0
}
coord_init "$DATA"
start_coordinator
"$FERRY" init --repo "$REPO" --chunk-size 64K >/dev/null
api POST /repositories "{\"name\": \"main\", \"location\": \"$REPO\", \"task_slots\": 4}" >/dev/null

mkdir -p "$WORK/qmp"
make_data_disk "$WORK/d0.raw" raw $((16 * MiB)) 5
VM_NAME=life vm_start "$WORK/vm" "virtio0=$WORK/d0.raw"
ln -sf "$WORK/vm/qmp.sock" "$WORK/qmp/101.qmp"
worker_token w >"$WORK/w.token"
worker_start w --token-file "$WORK/w.token" --host host-a --qmp-dir "$WORK/qmp" --slots 2 \
  --runtime-dir "$WORK/run-w" --scratch-dir "$WORK/scratch-w" --inventory-interval 1s
vm_reported() { [[ $(api GET /vms | jpy "len(d['vms'])") -ge 1 ]]; }
wait_for "the VM to be reported" 30 vm_reported

# The job, made with the CLI (its retention options are ferry prune's).
JOB=$("$FERRY" --coordinator "$API" job create life --repo main --vm life --retries 0 --retry-interval 0 \
  --keep-last 2 --check-daily 03:00 | jpy 'd["id"]') || fail "job create"
[[ $(api GET "/jobs/$JOB" | jpy 'd["retention_description"]') == "keep-last 2" ]] || fail "the job's policy: $(api GET "/jobs/$JOB")"

lifecycle_done() { [[ $(api GET "/sessions/$1" | jpy '(d["lifecycle"] or {}).get("state")') =~ ^(done|failed)$ ]]; }
# run_session: a backup session of the job, its lifecycle step done; sets
# $S and $P (the point's row id) and keeps a reference copy of the disk.
run_session() {
  snapshot_copy "$WORK/d0.raw" "$WORK/ref-next" "$WORK/vm" virtio0
  S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
  wait_for "session $S to end" 120 session_ended "$S"
  [[ $(session_state "$S") == succeeded ]] || { api GET "/sessions/$S/log" >&2; fail "session $S: $(session_state "$S")"; }
  wait_for "session $S's lifecycle step" 60 lifecycle_done "$S"
  [[ $(api GET "/sessions/$S" | jpy 'd["lifecycle"]["state"]') == done ]] || fail "lifecycle of session $S: $(api GET "/sessions/$S")"
  P=$(api GET "/points?job=$JOB" | jpy "[p['id'] for p in d['points'] if p['session_id'] == $S][0]")
  mv "$WORK/ref-next" "$WORK/ref-$P"
}
point_id() { api GET "/points/$1" | jpy 'd["point_id"]'; }
listed() { api GET "/points?job=$JOB" | jpy "' '.join(str(p['id']) for p in reversed(d['points']))"; }
check_restores() {  # ROW...: each point restores bit-exact
  local row id
  for row in "$@"; do
    id=$(point_id "$row")
    rm -f "$WORK/restored"
    "$FERRY" --quiet restore --repo "$REPO" --point "$id" --disk virtio0 --to "$WORK/restored" || fail "point $id does not restore"
    cmp -s "$WORK/restored" "$WORK/ref-$row" || fail "point $id does not restore bit-exact"
  done
}

run_session; P1=$P
# A lock by hand (the CLI: POST /points/{id}/lock): 1 day.
out=$("$FERRY" --coordinator "$API" point lock "$P1" --days 1 --reason "kept for the auditors") || fail "point lock"
[[ $(jpy 'd["locked_until"] is not None' <<<"$out") == True ]] || fail "lock: $out"
"$FERRY" list --repo "$REPO" --json | python3 -c '
import json, sys
p = [p for p in json.load(sys.stdin)["points"] if p["id"] == sys.argv[1]][0]
assert p["lock"] and p["lock"]["active"] and p["lock"]["reason"] == "kept for the auditors", p' "$(point_id "$P1")" ||
  fail "the repository does not hold the lock"
r=$(api_status DELETE "/points/$P1")
[[ ${r%% *} == 409 && $r == *"locked until"* ]] || fail "DELETE of a locked point: $r"
ok "point $P1 locked for a day through the API (the repository holds the lock); DELETE refused: ${r:0:140}"

# P2 alone has 0x21 at 4M: the next session writes over it.
vm_write "$WORK/vm" virtio0 0x21 $((4 * MiB)) $((1 * MiB)) >/dev/null
run_session; P2=$P
vm_write "$WORK/vm" virtio0 0x22 $((4 * MiB)) $((1 * MiB)) >/dev/null
digests "$REPO/points/$(point_id "$P2")"/*.fidx >"$WORK/p2.digests"
run_session; P3=$P
# keep-last 2 keeps P3 and P2, and P1 stays by its lock.
[[ $(listed) == "$P1 $P2 $P3" ]] || fail "after 3 sessions the job has points $(listed)"
vm_write "$WORK/vm" virtio0 0x23 $((6 * MiB)) $((1 * MiB)) >/dev/null
run_session; P4=$P
[[ $(listed) == "$P1 $P3 $P4" ]] || fail "after 4 sessions the job has points $(listed); P2 should be gone"
[[ ! -e $REPO/points/$(point_id "$P2") ]] || fail "retention left point $P2 in the repository"
api GET "/sessions/$S" >"$WORK/s4.json"
python3 - "$WORK/s4.json" "$(point_id "$P2")" <<'PY' || fail "session $S's lifecycle: $(cat "$WORK/s4.json")"
import json, sys
l = json.load(open(sys.argv[1]))["lifecycle"]
assert l["retention"]["policy"] == "keep-last 2", l
assert l["retention"]["removed"] == [sys.argv[2]], l
assert l["gc"]["chunks_removed"] >= 1, l
assert l["space"]["stored_bytes"] > 0, l
PY
# The chunks only P2 had are gone (0x21 at 4M).
digests "$REPO"/points/*/*.fidx >"$WORK/kept.digests"
comm -23 "$WORK/p2.digests" "$WORK/kept.digests" >"$WORK/p2-unique.digests"
[[ -s $WORK/p2-unique.digests ]] || fail "point $P2 had no chunk of its own"
while read -r d; do [[ ! -e $REPO/chunks/${d:0:3}/$d ]] || fail "GC left chunk $d of removed point $P2"; done <"$WORK/p2-unique.digests"
removed=$(api GET "/points?job=$JOB&removed=true" | jpy "[p['removed_at'] for p in d['points'] if p['id'] == $P2][0]")
[[ $removed != None ]] || fail "point $P2 is not marked removed"
r=$(api_status POST /restores "{\"point\": $P2, \"disk\": \"virtio0\", \"host\": \"host-a\", \"target\": {\"type\": \"file\", \"path\": \"$WORK/x.raw\", \"format\": \"raw\"}}")
[[ ${r%% *} == 400 && $r == *removed* ]] || fail "a restore of removed point $P2: $r"
ok "keep-last 2 after each session: $P2 removed (its $(wc -l <"$WORK/p2-unique.digests") unique chunk(s) collected), $P1 kept by its lock; a restore of $P2 is refused"

# Space: the repository's figures and the job's.
api GET /repositories/1 | python3 -c '
import json, sys
r = json.load(sys.stdin)
s = r["space"]
assert s["point_count"] == 3 and s["stored_bytes"] > 0 and s["dedup_ratio"] > 1, s' || fail "repository space: $(api GET /repositories/1)"
api GET "/points?job=$JOB" | python3 -c '
import json, sys
for p in json.load(sys.stdin)["points"]:
    assert p["logical_bytes"] == 16 * 1024 * 1024 and p["unique_bytes"] is not None, p' || fail "point space: $(api GET "/points?job=$JOB")"
api GET "/jobs/$JOB" | python3 -c '
import json, sys
s = json.load(sys.stdin)["space"]
assert s["chain"] == "life" and s["points"] == 3 and s["logical_bytes"] == 3 * 16 * 1024 * 1024, s
assert 0 < s["unique_bytes"] <= s["stored_bytes"], s' || fail "job space: $(api GET "/jobs/$JOB")"
ok "space: repository $(api GET /repositories/1 | jpy 'd["space"]["stored_bytes"]') bytes stored; job $(api GET "/jobs/$JOB" | jpy 'd["space"]')"

# kill -9 and restart: the lock holds.
coord_kill9
start_coordinator "$RPC"
r=$(api_status DELETE "/points/$P1")
[[ ${r%% *} == 409 ]] || fail "DELETE of the locked point after a restart: $r"
[[ -d $REPO/points/$(point_id "$P1") ]] || fail "the locked point is gone"
ok "after kill -9 and a restart of the coordinator the lock still refuses DELETE"

# --- health checks ---
# Damage a chunk every kept point has: the disk's first, never written since
# the first session.
digests "$REPO/points/$(point_id "$P4")"/*.fidx >"$WORK/p4.digests"
victim=$(python3 - "$REPO/points/$(point_id "$P4")/disk-0.fidx" <<'EOF'
import sys
data = open(sys.argv[1], "rb").read()
print(data[64:96].hex())  # chunk 0
EOF
)
printf 'XXXX' | dd of="$REPO/chunks/${victim:0:3}/$victim" bs=1 seek=40 conv=notrunc status=none
C=$("$FERRY" --coordinator "$API" job check life | sed -n 's/^health check session \([0-9]*\) started$/\1/p')
[[ -n $C ]] || fail "ferry job check printed no session"
wait_for "check session $C to end" 60 session_ended "$C"
[[ $(session_state "$C") == warning ]] || fail "the check of a damaged repository: $(api GET "/sessions/$C")"
api GET "/points?job=$JOB" >"$WORK/points.json"
python3 - "$WORK/points.json" <<'PY' || fail "points after the check: $(cat "$WORK/points.json")"
import json, sys
points = json.load(open(sys.argv[1]))["points"]
assert all(p["last_check"] and p["last_check"]["state"] == "damaged" for p in points), points
assert all(p["last_check"]["problems"] >= 1 and p["last_check"]["first_problem"] for p in points), points
PY
[[ ! -e $REPO/chunks/${victim:0:3}/$victim ]] || fail "the damaged chunk was not quarantined"
[[ $(api GET "/jobs/$JOB" | jpy 'd["last_check"]["state"]') == warning ]] || fail "the job does not show its last check"
ok "health check $C found the damaged chunk: every point marked damaged, the chunk quarantined ($(api GET "/sessions/$C" | jpy 'd["reason"]' | cut -c1-120))"

# The next backup stores the chunk again; the next check is clean.
run_session; P5=$P
[[ -e $REPO/chunks/${victim:0:3}/$victim ]] || fail "the next backup did not store the damaged chunk again"
C2=$(api POST "/jobs/$JOB/check" | jpy 'd["session"]')
wait_for "check session $C2 to end" 60 session_ended "$C2"
[[ $(session_state "$C2") == succeeded ]] || fail "the check after the healing backup: $(api GET "/sessions/$C2")"
api GET "/points?job=$JOB" | python3 -c '
import json, sys
points = json.load(sys.stdin)["points"]
assert all(p["last_check"]["state"] == "ok" for p in points), points' || fail "points after the second check: $(api GET "/points?job=$JOB")"
kept=$(listed)
"$FERRY" --coordinator "$API" point list --job life >"$WORK/point-list.txt" || fail "point list"
# Query values are percent-encoded; lists page.
[[ $("$FERRY" --coordinator "$API" point list --vm 'a b&c=d' --json | jpy 'len(d["points"])') == 0 ]] || fail "point list --vm 'a b&c=d'"
[[ $("$FERRY" --coordinator "$API" session list --job life --limit 2 --json | jpy 'len(d["sessions"])') == 2 ]] || fail "session list --limit 2"
grep -q "LOCKED_UNTIL\|locked_until" "$WORK/point-list.txt" && [[ $(grep -c " ok" "$WORK/point-list.txt") == 3 ]] ||
  fail "ferry point list: $(cat "$WORK/point-list.txt")"
[[ $kept == "$P1 $P4 $P5" ]] || fail "after 5 sessions the job has points $kept"
"$FERRY" verify --repo "$REPO" >"$WORK/verify.log" 2>&1 || fail "verify: $(cat "$WORK/verify.log")"
# shellcheck disable=SC2086
check_restores $kept
ok "backup $S healed the chunk; check $C2 clean; the kept points $kept verify and restore bit-exact"

# The health check also runs by schedule: the job shows its next run.
[[ $(api GET "/jobs/$JOB" | jpy 'd["health_check"]["next_run_at"] is not None') == True ]] || fail "no next health check"
[[ $(api GET "/sessions?kind=check&job=$JOB" | jpy 'len(d["sessions"])') == 2 ]] || fail "GET /sessions?kind=check"
ok "the job's next scheduled health check: $(api GET "/jobs/$JOB" | jpy 'd["health_check"]["next_run_at"]')"
