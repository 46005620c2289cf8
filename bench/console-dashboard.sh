#!/usr/bin/env bash
# The web console at scale: WORKERS simulated workers (default 1000) with VMS
# VMs (default 10000, DISKS disks each), set up as bench/coordinator-scale.sh
# does (its probe's setup and wait steps); then bench/console-dashboard.mjs
# measures the dashboard's render time after the API answered (target < 1 s)
# and the coordinator's CPU during a session with the console open and
# polling vs without (target: < 5 points of one core extra).
# Usage: bench/console-dashboard.sh [WORKDIR]
# Environment (defaults): WORKERS=1000 CLUSTERS=50 VMS=10000 DISKS=2 SLOTS=2
#   TASK_MS=20000 (long: the session must outlast its 3 x CYCLES CPU windows)
#   RUNS=5 WINDOW_S=10 SESSION_WINDOW_S=30 CYCLES=2 FERRY_CONSOLE_DIR (default build/console)
#   FERRY_CONSOLE_DEV_PROXY=1: serve the console with tests/console/dev-server.mjs
#   (a coordinator without --console-dir); otherwise the coordinator serves it.
# Needs chromium and tests/console/node_modules (scripts/install-deps).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${FERRY_BUILD_DIR:-$root/build}
coordinator=${FERRY_COORDINATOR:-$build/coordinator/ferry-coordinator}
simworker=${FERRY_SIMWORKER:-$build/tests/simworker/ferry-simworker}
console_dir=${FERRY_CONSOLE_DIR:-$build/console}
probe=$root/bench/coordinator_scale_probe.py
WORKERS=${WORKERS:-1000} CLUSTERS=${CLUSTERS:-50} VMS=${VMS:-10000} DISKS=${DISKS:-2} SLOTS=${SLOTS:-2}
TASK_MS=${TASK_MS:-20000}
for f in "$coordinator" "$simworker" "$console_dir/index.html" "$root/tests/console/node_modules/puppeteer-core"; do
  [[ -e $f ]] || { echo "console-dashboard: $f is missing" >&2; exit 1; }
done
work=${1:-$(mktemp -d "${TMPDIR:-/tmp}/ferry-console-bench.XXXXXX")}
mkdir -p "$work"
coord_pid='' sim_pid='' dev_pid=''
cleanup() {
  # Only what this script started, by pid.
  for p in $dev_pid $sim_pid $coord_pid; do kill "$p" 2>/dev/null || true; done
  for p in $dev_pid $sim_pid $coord_pid; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

token=$("$coordinator" init --data "$work/data" 2>>"$work/coordinator.log")
console_args=(--console-dir "$console_dir")
[[ ${FERRY_CONSOLE_DEV_PROXY:-0} == 1 ]] && console_args=()
"$coordinator" run --data "$work/data" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 \
  --rpc-max-connections $((WORKERS + 64)) --rpc-max-connections-per-address $((WORKERS + 64)) \
  --ready-file "$work/ready" "${console_args[@]}" >>"$work/coordinator.log" 2>&1 &
coord_pid=$!
for _ in $(seq 200); do [[ -s $work/ready ]] && break; sleep 0.05; done
[[ -s $work/ready ]] || { tail "$work/coordinator.log" >&2; exit 1; }
read -r api rpc < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["api"], r["rpc"])' "$work/ready")
url=$api
if [[ ${FERRY_CONSOLE_DEV_PROXY:-0} == 1 ]]; then
  node "$root/tests/console/dev-server.mjs" "$console_dir" "$api" >"$work/dev-server.out" 2>&1 &
  dev_pid=$!
  for _ in $(seq 100); do grep -q http "$work/dev-server.out" 2>/dev/null && break; sleep 0.1; done
  url=$(head -1 "$work/dev-server.out")
fi
echo "console-dashboard: coordinator $coord_pid at $api; console at $url; $WORKERS workers, $VMS VMs x $DISKS disks" >&2
export FERRY_TOKEN=$token
common=(--api "$api" --workers "$WORKERS" --clusters "$CLUSTERS" --vms "$VMS" --disks "$DISKS" --slots "$SLOTS"
  --repo-slots 1024 --task-ms "$TASK_MS" --out "$work/result.json" --report "$work/report.json" --pid "$coord_pid"
  --coordinator-log "$work/coordinator.log")
job=$(python3 "$probe" setup "${common[@]}" --repo-location "$work/repo" --workers-file "$work/workers.json")
"$simworker" --coordinator "$rpc" --workers "$work/workers.json" --quiet --task-ms "$TASK_MS" --snapshot-ms 20 \
  --release-ms 5 --pull-wait-ms 1000 >"$work/simworker.log" 2>&1 &
sim_pid=$!
python3 "$probe" wait "${common[@]}" --sim-pid "$sim_pid" --timeout 300
CONSOLE_URL=$url COORD_PID=$coord_pid JOB=$job OUT=$work/console-bench.json \
  PUPPETEER_FROM=$root/tests/console/package.json node "$root/bench/console-dashboard.mjs"
