#!/usr/bin/env bash
# Coordinator scale benchmark: simulated workers over loopback, one job over
# every VM, measured while it runs.
#   WORKERS workers on as many hosts (worker i on host h<i>, cluster
#   c<i % CLUSTERS>, SLOTS task slots), VMS VMs spread evenly over them, DISKS
#   disks each, all tagged "bench"; one repository (REPO_SLOTS task slots) and
#   one job selecting tag "bench". ferry-simworker runs the workers (disk tasks
#   take TASK_MS, snapshots SNAPSHOT_MS, releases RELEASE_MS).
# Measured (docs/benchmarks.md, "Coordinator scale"):
#   - time from POST /jobs/{id}/start until every disk task was handed out
#     (exact, from the simworker report's receipt times; also by polling the
#     session totals), disk-task assignments/s, all work items/s
#   - session wall time, coordinator CPU and peak RSS (VmHWM)
#   - API GET latency p50/p99/max from a probe thread issuing GET /status,
#     /jobs, /workers?limit=100, /sessions?limit=10 in a loop during the run
#   - locality: tasks by tier; every tier-host task on a worker of the VM's
#     host; every other task's tier_reason says the VM's host worker was busy
#     or unreachable; no worker ran more disk tasks at once than its slots
# Usage: bench/coordinator-scale.sh [WORKDIR]   (default: a new temp dir,
#   removed at the end unless KEEP=1)
# Environment (defaults): WORKERS=1000 CLUSTERS=50 VMS=10000 DISKS=2 SLOTS=2
#   TASK_MS=100 SNAPSHOT_MS=20 RELEASE_MS=5 REPO_SLOTS=1024 (the API's maximum)
#   PULL_WAIT_MS=1000 PROBE_INTERVAL_MS=50 TIMEOUT_S=900 KEEP=0 STOP_TIMEOUT_S=30
#   Smoke run: WORKERS=20 VMS=200 bench/coordinator-scale.sh
# Prints progress on stderr, a table and key=value lines on stdout. Exits
# non-zero if the run failed (coordinator or simulator died, session did not
# succeed, a wrong task count); missed targets are reported, not failures.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${FERRY_BUILD_DIR:-$root/build}
coordinator=${FERRY_COORDINATOR:-$build/coordinator/ferry-coordinator}
simworker=${FERRY_SIMWORKER:-$build/tests/simworker/ferry-simworker}
probe=$root/bench/coordinator_scale_probe.py

WORKERS=${WORKERS:-1000}
CLUSTERS=${CLUSTERS:-50}
VMS=${VMS:-10000}
DISKS=${DISKS:-2}
SLOTS=${SLOTS:-2}
TASK_MS=${TASK_MS:-100}
SNAPSHOT_MS=${SNAPSHOT_MS:-20}
RELEASE_MS=${RELEASE_MS:-5}
REPO_SLOTS=${REPO_SLOTS:-1024}
PULL_WAIT_MS=${PULL_WAIT_MS:-1000}
PROBE_INTERVAL_MS=${PROBE_INTERVAL_MS:-50}
TIMEOUT_S=${TIMEOUT_S:-900}
KEEP=${KEEP:-0}
((CLUSTERS > WORKERS)) && CLUSTERS=$WORKERS

for b in "$coordinator" "$simworker"; do
  [[ -x $b ]] || {
    echo "coordinator-scale: $b is missing; build it:" \
      "cmake --build $build --target ferry-coordinator ferry-simworker" >&2
    exit 1
  }
done

given_work=${1:-}
if [[ -n $given_work ]]; then
  work=$given_work
  mkdir -p "$work"
  rm -rf "$work/data" "$work/ready" "$work/job" "$work/workers.json" "$work/report.json" \
    "$work/result.json" "$work/result.json.wait" "$work/coordinator.log" "$work/simworker.log"
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-scale.XXXXXX")
fi
coord_pid='' sim_pid='' step_pid=''
# stop PID NAME: SIGTERM, then SIGKILL after STOP_TIMEOUT_S (default 30).
stop() {
  local pid=$1 name=$2 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < ${STOP_TIMEOUT_S:-30} * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "coordinator-scale: $name ($pid) still running ${STOP_TIMEOUT_S:-30} s after SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  # Only the processes this script started, by pid.
  [[ -n $step_pid ]] && stop "$step_pid" "helper"
  [[ -n $sim_pid ]] && stop "$sim_pid" ferry-simworker
  [[ -n $coord_pid ]] && stop "$coord_pid" ferry-coordinator
  if ((rc != 0)); then
    echo "coordinator-scale: failed; last lines of the logs in $work:" >&2
    tail -n 5 "$work/coordinator.log" "$work/simworker.log" >&2 2>/dev/null || true
  elif [[ $KEEP != 1 && -z $given_work ]]; then
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# step ARGS...: runs the helper in the background and waits for it, so that
# INT/TERM reach the trap at once rather than after the step.
step() {
  python3 "$probe" "$@" &
  step_pid=$!
  local rc=0
  wait "$step_pid" || rc=$?
  step_pid=''
  return "$rc"
}

# One descriptor per worker connection, on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < WORKERS + 100)); then
  echo "coordinator-scale: need at least $((WORKERS + 100)) file descriptors, have $(ulimit -n)" >&2
  exit 1
fi

echo "coordinator-scale: $WORKERS workers, $CLUSTERS clusters, $VMS VMs x $DISKS disks, $SLOTS slots," \
  "task ${TASK_MS} ms; work dir $work; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "coordinator-scale: $coordinator built $(date -u -r "$coordinator" +%FT%TZ)" >&2
token=$("$coordinator" init --data "$work/data" 2>>"$work/coordinator.log")
# All the simulated workers connect from 127.0.0.1: lift the per-address cap.
"$coordinator" run --data "$work/data" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 \
  --rpc-max-connections $((WORKERS + 64)) --rpc-max-connections-per-address $((WORKERS + 64)) \
  --ready-file "$work/ready" >>"$work/coordinator.log" 2>&1 &
coord_pid=$!
for ((i = 0; i < 200; i++)); do
  [[ -s $work/ready ]] && break
  kill -0 "$coord_pid" 2>/dev/null || break
  sleep 0.05
done
[[ -s $work/ready ]] || {
  echo "coordinator-scale: the coordinator did not start" >&2
  exit 1
}
read -r api rpc < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["api"], r["rpc"])' "$work/ready")
echo "coordinator-scale: coordinator $coord_pid: API $api, RPC $rpc" >&2

export FERRY_TOKEN=$token
common=(--api "$api" --workers "$WORKERS" --clusters "$CLUSTERS" --vms "$VMS" --disks "$DISKS"
  --slots "$SLOTS" --repo-slots "$REPO_SLOTS" --task-ms "$TASK_MS" --out "$work/result.json"
  --report "$work/report.json" --pid "$coord_pid" --coordinator-log "$work/coordinator.log")
step setup "${common[@]}" --repo-location "$work/repo" --workers-file "$work/workers.json" >"$work/job"
job=$(cat "$work/job")

"$simworker" --coordinator "$rpc" --workers "$work/workers.json" --quiet --report "$work/report.json" \
  --task-ms "$TASK_MS" --snapshot-ms "$SNAPSHOT_MS" --release-ms "$RELEASE_MS" \
  --pull-wait-ms "$PULL_WAIT_MS" >"$work/simworker.log" 2>&1 &
sim_pid=$!
step wait "${common[@]}" --sim-pid "$sim_pid" --timeout 300
step run "${common[@]}" --job "$job" --sim-pid "$sim_pid" --timeout "$TIMEOUT_S" \
  --probe-interval-ms "$PROBE_INTERVAL_MS" || {
  echo "coordinator-scale: the run did not complete" >&2
  exit 1
}

# The simulator writes its report when told to stop (SIGTERM), then exits 0.
sim_rc=0
kill -TERM "$sim_pid" 2>/dev/null || true
for ((i = 0; i < 600; i++)); do
  kill -0 "$sim_pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$sim_pid" 2>/dev/null; then
  echo "coordinator-scale: ferry-simworker still running 60 s after SIGTERM; killing it (no report)" >&2
  kill -KILL "$sim_pid" 2>/dev/null || true
fi
wait "$sim_pid" || sim_rc=$?
sim_pid=''
if ((sim_rc != 0)); then
  echo "coordinator-scale: ferry-simworker exited $sim_rc" >&2
  exit 1
fi
step verify "${common[@]}"
kill -0 "$coord_pid" 2>/dev/null || {
  echo "coordinator-scale: the coordinator died" >&2
  exit 1
}
step summary "${common[@]}"
