#!/usr/bin/env bash
# The web console (coordinator/console) in headless chromium against a real
# coordinator serving it (--console-dir) and simulated workers:
# tests/console/console-test.mjs logs in (a wrong token first), creates a job
# through the form (API errors beside their fields), watches the live
# selection preview, starts the job, follows its session to "succeeded",
# opens its tasks, finds the VM's restore point, and runs axe-core on every
# main page. Every request must stay on the coordinator's origin; the whole
# test runs in a network namespace with loopback only (unshare -n) when it
# can, so nothing could leave the machine anyway.
# Environment: FERRY_COORDINATOR, FERRY_SIMWORKER (as the other coordinator
# tests), FERRY_CONSOLE_DIR (the built console: build/console),
# FERRY_CONSOLE_SCREENSHOTS (default: $WORK/screenshots, removed with it),
# CHROMIUM (default /usr/bin/chromium).
# FERRY_CONSOLE_DEV_PROXY=1: for development against a coordinator without
# --console-dir: tests/console/dev-server.mjs serves the directory and proxies
# /api/ to it, on one origin.

# Offline: re-run in a new network namespace with only loopback, up.
if [[ -z ${FERRY_CONSOLE_NETNS:-} ]]; then
  if [[ ${FERRY_CONSOLE_OFFLINE:-1} == 1 ]] && unshare -n true 2>/dev/null && command -v ip >/dev/null; then
    exec unshare -n bash -c 'ip link set lo up && FERRY_CONSOLE_NETNS=1 exec bash "$0" "$@"' "$0" "$@"
  fi
  export FERRY_CONSOLE_NETNS=0
fi

. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"

CONSOLE_DIR=${FERRY_CONSOLE_DIR:-}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
NODE_DIR=$TESTS_DIR/console
skip() { echo "SKIP: $*"; exit 77; }
[[ -n $CONSOLE_DIR && -f $CONSOLE_DIR/index.html ]] || skip "no built console (FERRY_CONSOLE_DIR=$CONSOLE_DIR): node coordinator/console/build.mjs DIR"
[[ -x $CHROMIUM ]] || skip "no $CHROMIUM (scripts/install-deps installs the chromium package)"
command -v node >/dev/null || skip "no node"
[[ -d $NODE_DIR/node_modules/puppeteer-core && -d $NODE_DIR/node_modules/axe-core ]] \
  || skip "no tests/console/node_modules (scripts/install-deps runs npm ci there)"
[[ -n $SIMWORKER ]] || skip "set FERRY_SIMWORKER"
if [[ ${FERRY_CONSOLE_DEV_PROXY:-0} != 1 ]] && ! "$COORDINATOR" run --help 2>&1 | grep -q -- --console-dir; then
  fail "$COORDINATOR has no --console-dir"
fi
if [[ $FERRY_CONSOLE_NETNS == 1 ]]; then
  [[ $(ip -o route show 2>/dev/null | wc -l) == 0 ]] || fail "the network namespace has routes: $(ip -o route show)"
  ok "offline: a network namespace with loopback only ($(ip -o link show | cut -d: -f2 | xargs))"
else
  ok "not in a network namespace (unshare -n unavailable): requests to other origins are still refused by the test"
fi
SHOTS=${FERRY_CONSOLE_SCREENSHOTS:-$WORK/screenshots}

DATA=$WORK/coord
coord_init "$DATA"
HB=(--heartbeat-interval-ms 500 --heartbeat-deadline-ms 5000)
if [[ ${FERRY_CONSOLE_DEV_PROXY:-0} == 1 ]]; then
  coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 "${HB[@]}"
  node "$NODE_DIR/dev-server.mjs" "$CONSOLE_DIR" "$API" >"$WORK/dev-server.out" 2>&1 &
  DEV_PID=$!
  on_exit "kill $DEV_PID 2>/dev/null"
  wait_for "the dev server" 10 grep -q http "$WORK/dev-server.out"
  CONSOLE_URL=$(head -1 "$WORK/dev-server.out")
  ok "coordinator at $API; development server (pid $DEV_PID) at $CONSOLE_URL serving $CONSOLE_DIR"
else
  coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 "${HB[@]}" --console-dir "$CONSOLE_DIR"
  CONSOLE_URL=$API
  ok "coordinator at $API serving the console from $CONSOLE_DIR"
fi
# The coordinator serves the console itself: its page, and a client-side route.
python3 - "$CONSOLE_URL" <<'PY' || fail "the console is not served at $CONSOLE_URL"
import sys, urllib.request
for path in ("/", "/jobs/3"):
    with urllib.request.urlopen(sys.argv[1] + path, timeout=10) as r:
        body = r.read().decode()
        assert r.status == 200 and '<script type="module" src="/app.js">' in body, (path, r.status, body[:200])
        assert "<script>" not in body and "style=" not in body, "inline script or style in index.html"
PY

api POST /repositories "{\"name\": \"main\", \"location\": \"$WORK/repo\", \"task_slots\": 4}" >/dev/null
W1=$(api POST /workers '{"name": "w1"}' | jpy 'd["token"]')
W2=$(api POST /workers '{"name": "w2"}' | jpy 'd["token"]')
disk() { printf '{"name": "%s", "size": 1073741824, "format": "qcow2"}' "$1"; }
vm() { printf '{"name": "%s", "uuid": "uuid-%s", "state": "running", "tags": [%s], "disks": [%s]}' "$1" "$1" "$2" "$3"; }
cat >"$WORK/workers.json" <<JSON
[{"token": "$W1", "host": "h1", "platform": "libvirt", "cluster": "c1", "slots": 2,
  "vms": [$(vm web01 '"prod", "web"' "$(disk vda),$(disk vdb)"), $(vm db01 '"prod"' "$(disk vda)")]},
 {"token": "$W2", "host": "h2", "platform": "libvirt", "cluster": "c1", "slots": 2,
  "vms": [$(vm app01 '"prod"' "$(disk sda)"), $(vm test01 '"dev"' "$(disk vda)")]}]
JSON
# Tasks long enough to watch the session run in the browser.
sim_start sim --workers "$WORK/workers.json" --task-ms 3000 --snapshot-ms 200
wait_for "4 VMs inventoried" 30 bash -c "[[ \$(FERRY_TOKEN=$TOKEN '$FERRY' --coordinator $API status | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d[\"vms\"], d[\"workers_connected\"])') == '4 2' ]]"
api POST /jobs '{"name": "test-vms", "repository": 1, "selection": {"tags": ["dev"]}, "schedule": {"kind": "daily", "at": "03:00"}}' >/dev/null
ok "2 simulated workers on h1 and h2, 4 VMs (3 tagged prod), one job (test-vms)"

rc=0
CONSOLE_URL=$CONSOLE_URL FERRY_TOKEN=$TOKEN SCREENSHOTS=$SHOTS CHROMIUM=$CHROMIUM \
  EXPECT_VMS=app01,db01,web01 OTHER_VMS=test01 EXISTING_JOB=test-vms \
  node "$NODE_DIR/console-test.mjs" || rc=$?
ls "$SHOTS" | paste -sd' ' | sed 's/^/screenshots: /'
((rc == 0)) || { tail -20 "$DATA/log"; fail "console-test.mjs exited $rc (screenshots in $SHOTS)"; }

# What the browser did, seen through the API.
api GET /jobs >"$WORK/jobs.json"
JOB=$(jpy '[j["id"] for j in d["jobs"] if j["name"] == "nightly"][0]' <"$WORK/jobs.json")
[[ $(jpy '[j for j in d["jobs"] if j["name"] == "nightly"][0]["selection"]["tags"] == ["prod"] and [j for j in d["jobs"] if j["name"] == "nightly"][0]["schedule"]["kind"] == "daily"' <"$WORK/jobs.json") == True ]] \
  || fail "the job the console made: $(cat "$WORK/jobs.json")"
[[ $(api GET "/points?job=$JOB" | jpy '",".join(sorted(p["vm"] for p in d["points"]))') == app01,db01,web01 ]] || fail "points of job $JOB"
[[ $(api GET /jobs | jpy 'len(d["jobs"])') == 2 ]] || fail "the refused submissions made jobs"
ok "through the API: job nightly (tag prod, daily) made by the console, its session's 3 points; the refused forms made nothing"
