# shellcheck shell=bash
# Helpers for tests that drive a real ferry-coordinator and simulated workers
# (sourced after integration/common.sh). Everything started here is stopped
# by pid on exit.
#   coord_init DIR            create state; sets TOKEN
#   coord_start DIR [ARGS]    run it; sets API, RPC, COORD_PID
#   coord_kill9               kill -9 the coordinator
#   api METHOD PATH [BODY]    one API call; prints the JSON body, fails on >= 400
#   api_status METHOD PATH [BODY]  the same whatever its status; prints "STATUS BODY"
#   jpy EXPR                  evaluates EXPR over the JSON on stdin (as `d`)
#   sim_start NAME ARGS...    start ferry-simworker in the background; SIM_PID[NAME]
COORDINATOR=${FERRY_COORDINATOR:?set FERRY_COORDINATOR to the ferry-coordinator binary}
SIMWORKER=${FERRY_SIMWORKER:-}
declare -A SIM_PID=()

coord_init() { TOKEN=$("$COORDINATOR" init --data "$1"); export FERRY_TOKEN=$TOKEN; }

coord_start() {
  local dir=$1; shift
  rm -f "$dir/ready"
  "$COORDINATOR" run --data "$dir" --ready-file "$dir/ready" "$@" >>"$dir/log" 2>&1 &
  COORD_PID=$!
  on_exit "kill -9 $COORD_PID 2>/dev/null"
  for _ in $(seq 100); do [[ -s $dir/ready ]] && break; sleep 0.1; done
  [[ -s $dir/ready ]] || { cat "$dir/log"; fail "coordinator did not start"; }
  API=$(jpy 'd["api"]' <"$dir/ready")
  RPC=$(jpy 'd["rpc"]' <"$dir/ready")
}

coord_kill9() { kill -9 "$COORD_PID"; wait "$COORD_PID" 2>/dev/null || true; }

api() {
  python3 - "$API" "$TOKEN" "$@" <<'PY'
import sys, urllib.request, urllib.error
base, token, method, path = sys.argv[1:5]
body = sys.argv[5].encode() if len(sys.argv) > 5 else None
req = urllib.request.Request(base + "/api/v1" + path, data=body, method=method,
                             headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        print(r.read().decode())
except urllib.error.HTTPError as e:
    sys.stderr.write(f"{method} {path}: HTTP {e.code}: {e.read().decode()}\n")
    sys.exit(1)
PY
}

# api_status METHOD PATH [BODY]: one API call whatever its status; prints "STATUS BODY".
api_status() {
  python3 - "$API" "$TOKEN" "$@" <<'PY'
import sys, urllib.request, urllib.error
base, token, method, path = sys.argv[1:5]
body = sys.argv[5].encode() if len(sys.argv) > 5 else None
req = urllib.request.Request(base + "/api/v1" + path, data=body, method=method,
                             headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
PY
}

jpy() { python3 -c 'import json, sys; d = json.load(sys.stdin); r = eval(sys.argv[1]); print(r if not isinstance(r, (dict, list)) else json.dumps(r))' "$1"; }

sim_start() {
  local name=$1; shift
  "$SIMWORKER" --coordinator "$RPC" --reconnect-ms 200 "$@" >>"$WORK/sim-$name.log" 2>&1 &
  SIM_PID[$name]=$!
  on_exit "kill -9 ${SIM_PID[$name]} 2>/dev/null"
}

# wait_for DESCRIPTION SECONDS COMMAND...: polls until COMMAND succeeds.
wait_for() {
  local what=$1 seconds=$2; shift 2
  # A deadline, not a count of polls: one poll can take a second on a loaded machine.
  local deadline=$((SECONDS + seconds))
  while ((SECONDS < deadline)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  # Enough to diagnose a CI failure: the coordinator's and simulators' last words.
  [[ -n ${DATA:-} && -f $DATA/log ]] && tail -25 "$DATA/log" >&2
  for f in "$WORK"/sim-*.log; do [[ -f $f ]] && { echo "== $f" >&2; tail -5 "$f" >&2; }; done
  [[ -n ${API:-} ]] && { api GET "/sessions?limit=1" >&2; id=$(api GET "/sessions?limit=1" | jpy 'd["sessions"][0]["id"]' 2>/dev/null) && api GET "/sessions/$id/log" >&2; } || true
  fail "timed out after ${seconds}s waiting for $what"
}

session_state() { api GET "/sessions/$1" | jpy 'd["state"]'; }
session_ended() { [[ $(session_state "$1") =~ ^(succeeded|warning|failed|stopped)$ ]]; }

# ferry-worker daemons (FERRY_WORKER: the binary), stopped by pid on exit.
#   worker_token NAME          POST /workers; prints the token
#   worker_start NAME ARGS...  start ferry-worker --coordinator $RPC ARGS; WORKER_PID[NAME],
#                              its log in $WORK/worker-NAME.log
#   worker_kill9 NAME / worker_stop NAME (SIGTERM, waits)
declare -A WORKER_PID=()
worker_token() { api POST /workers "{\"name\": \"$1\"}" | jpy 'd["token"]'; }
worker_start() {
  local name=$1; shift
  "${FERRY_WORKER:?set FERRY_WORKER to the ferry-worker binary}" --coordinator "$RPC" --reconnect-ms 200 "$@" \
    >>"$WORK/worker-$name.log" 2>&1 &
  WORKER_PID[$name]=$!
  on_exit "kill -9 ${WORKER_PID[$name]} 2>/dev/null"
}
worker_kill9() { kill -9 "${WORKER_PID[$1]}" 2>/dev/null; wait "${WORKER_PID[$1]}" 2>/dev/null || true; }
worker_stop() { kill -TERM "${WORKER_PID[$1]}" 2>/dev/null; wait "${WORKER_PID[$1]}" 2>/dev/null || true; }
