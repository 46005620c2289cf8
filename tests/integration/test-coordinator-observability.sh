#!/usr/bin/env bash
# The coordinator's operations surface (issue 15, item 5) with a simulated
# worker over the real RPC:
#   - GET /healthz answers without a token; GET /metrics needs one and parses
#     with a real Prometheus text-format parser (Debian's prometheus_client),
#     and its figures move with a session;
#   - a failed session is announced to a webhook (a local HTTP receiver that
#     fails the first POST: the retry delivers it), with the token, once;
#     a succeeded one is not;
#   - every session's outcome is in the daemon log, and with JOURNAL_STREAM
#     naming its stderr the log lines carry journald priorities.
. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"
PY3=/usr/bin/python3  # Debian's, with python3-prometheus-client (scripts/install-deps)
"$PY3" -c 'import prometheus_client.parser' 2>/dev/null || { echo "SKIP: no python3-prometheus-client"; exit 77; }

# The webhook receiver: the first POST gets 500, the rest 200; each body
# and its Authorization header is appended to hooks.jsonl.
"$PY3" - "$WORK/hooks.jsonl" "$WORK/hook.port" <<'PY' &
import http.server, json, sys
out, port_file = sys.argv[1], sys.argv[2]
seen = [0]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        seen[0] += 1
        if seen[0] == 1:
            self.send_response(500); self.end_headers(); return
        with open(out, "a") as f:
            f.write(json.dumps({"path": self.path, "auth": self.headers.get("Authorization"),
                                "body": json.loads(body)}) + "\n")
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open(port_file + ".tmp", "w").write(str(s.server_port)); __import__("os").rename(port_file + ".tmp", port_file)
s.serve_forever()
PY
HOOK_PID=$!
on_exit "kill $HOOK_PID 2>/dev/null"
for _ in $(seq 50); do [[ -s $WORK/hook.port ]] && break; sleep 0.1; done
echo "hook-secret-token" >"$WORK/hook.token"

DATA=$WORK/coord
coord_init "$DATA"
# stderr is the log file; JOURNAL_STREAM names it, as systemd would.
touch "$DATA/log"
export JOURNAL_STREAM
JOURNAL_STREAM=$(stat -c '%d:%i' "$DATA/log")
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 \
  --heartbeat-interval-ms 500 --heartbeat-deadline-ms 3000 \
  --webhook "http://127.0.0.1:$(cat "$WORK/hook.port")/ferry/hook?team=ops" --webhook-token-file "$WORK/hook.token"
unset JOURNAL_STREAM
grep -q '^<6>INFO serving the API' "$DATA/log" || fail "no journald priority prefix: $(head -3 "$DATA/log")"
ok "log lines carry journald priorities when JOURNAL_STREAM names stderr"

http_get() {  # PATH [TOKEN] -> "STATUS BODY"
  "$PY3" - "$API$1" "${2:-}" <<'PY'
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]} if sys.argv[2] else {})
try:
    with urllib.request.urlopen(req, timeout=10) as r: print(r.status, r.read().decode())
except urllib.error.HTTPError as e: print(e.code, e.read().decode())
PY
}
[[ $(http_get /healthz) == "200 ok" ]] || fail "/healthz: $(http_get /healthz)"
[[ $(http_get /metrics | head -c 3) == 401 ]] || fail "/metrics without a token: $(http_get /metrics | head -c 200)"
ok "/healthz answers without a token; /metrics refuses one without"

metric() {  # NAME LABELS-PYTHON-DICT -> the sample's value (0 when absent)
  http_get /metrics "$TOKEN" | "$PY3" -c '
import sys
from prometheus_client.parser import text_string_to_metric_families
status, _, text = sys.stdin.read().partition(" ")
assert status == "200", status
want_name, want_labels = sys.argv[1], eval(sys.argv[2])
value = 0
for family in text_string_to_metric_families(text):
    for s in family.samples:
        if s.name == want_name and all(s.labels.get(k) == v for k, v in want_labels.items()):
            value = s.value
print(int(value))' "$1" "$2"
}

api POST /repositories '{"name": "main", "location": "/srv/ferry", "task_slots": 2}' >/dev/null
WTOKEN=$(api POST /workers '{"name": "w1"}' | jpy 'd["token"]')
printf '[{"token": "%s", "host": "h1", "platform": "libvirt", "cluster": "c1", "slots": 2, "vms": [
  {"name": "vm1", "uuid": "u1", "state": "running", "tags": [], "disks": [{"name": "vda", "size": 1073741824, "format": "qcow2"}]},
  {"name": "vm2", "uuid": "u2", "state": "running", "tags": [], "disks": [{"name": "vda", "size": 1073741824, "format": "qcow2"}]}]}]\n' \
  "$WTOKEN" >"$WORK/workers.json"
sim_start w1 --workers "$WORK/workers.json" --task-ms 300 --fail vm2/vda:1000
wait_for "the inventory" 20 bash -c "[[ \$(FERRY_TOKEN=$TOKEN '$FERRY' --coordinator $API vm list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)[\"vms\"]))') == 2 ]]"
[[ $(metric ferry_workers "{'state': 'connected'}") == 1 ]] || fail "ferry_workers{state=connected}"
before=$(metric ferry_scheduler_assignments_total "{}")

GOOD=$(api POST /jobs '{"name": "good", "repository": 1, "selection": {"vms": ["vm1"]}, "retries": {"count": 0, "interval_s": 0}}' | jpy 'd["id"]')
BAD=$(api POST /jobs '{"name": "bad", "repository": 1, "selection": {"vms": ["vm2"]}, "retries": {"count": 0, "interval_s": 0}}' | jpy 'd["id"]')
S1=$(api POST "/jobs/$GOOD/start" | jpy 'd["session"]')
wait_for "session $S1 to end" 60 session_ended "$S1"
[[ $(session_state "$S1") == succeeded ]] || fail "session $S1: $(session_state "$S1")"
S2=$(api POST "/jobs/$BAD/start" | jpy 'd["session"]')
wait_for "session $S2 to end" 60 session_ended "$S2"
[[ $(session_state "$S2") == failed ]] || fail "session $S2: $(session_state "$S2")"

after=$(metric ferry_scheduler_assignments_total "{}")
((after > before)) || fail "ferry_scheduler_assignments_total did not move: $before -> $after"
[[ $(metric ferry_sessions "{'kind': 'backup', 'state': 'succeeded'}") == 1 ]] || fail "ferry_sessions succeeded"
[[ $(metric ferry_sessions "{'kind': 'backup', 'state': 'failed'}") == 1 ]] || fail "ferry_sessions failed"
[[ $(metric ferry_session_duration_seconds_count "{'kind': 'backup', 'state': 'succeeded'}") == 1 ]] || fail "durations"
(($(metric ferry_task_bytes_done "{}") > 0)) || fail "ferry_task_bytes_done did not move"
ok "/metrics parses (prometheus_client) and moved with the sessions: assignments $before -> $after, sessions by state, durations, bytes"

wait_for "the webhook" 30 test -s "$WORK/hooks.jsonl"
sleep 2  # a second announcement would be a bug: give it time to show
"$PY3" - "$WORK/hooks.jsonl" "$S2" <<'PY' || fail "webhook: $(cat "$WORK/hooks.jsonl")"
import json, sys
hooks = [json.loads(l) for l in open(sys.argv[1])]
assert len(hooks) == 1, hooks
h = hooks[0]
assert h["path"] == "/ferry/hook?team=ops", h
assert h["auth"] == "Bearer hook-secret-token", h
s = h["body"]["session"]
assert h["body"]["event"] == "session.ended" and s["id"] == int(sys.argv[2]) and s["state"] == "failed", h
assert s["job"] == "bad" and s["kind"] == "backup" and s["reason"], h
PY
grep -q "hook-secret-token" "$DATA/log" && fail "the webhook token is in the log"
ok "the failed session was announced once to the webhook (after a 500 and a retry), with its token; the succeeded one was not"

grep -q "^<6>INFO backup session $S1 of job 'good' succeeded" "$DATA/log" || fail "no outcome of $S1 in the daemon log"
grep -q "^<4>WARN backup session $S2 of job 'bad' failed" "$DATA/log" || fail "no outcome of $S2 in the daemon log"
ok "both outcomes are in the daemon log"
