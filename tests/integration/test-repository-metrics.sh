#!/usr/bin/env bash
# ferry-repository's operations endpoint (issue 15; docs/repository-service.md,
# "Metrics"), no VM needed: a service with TLS and --metrics-listen (given in
# its configuration file) serves /healthz to anyone and /metrics over HTTPS
# with the service's certificate to the holder of the metrics token only (not
# to a repository token); /metrics parses with a real Prometheus text parser
# (Debian's prometheus_client), and its counters move by exactly what
# `ferry stage`/`backup-disk`/`commit` through the service did: chunks
# received and stored, their bytes, calls by method, points committed, the
# deduplication of a second point of the same disk, a refused open, a GC;
# and `ferry list --json` names each point's writer (the service's version).
. "$(dirname "$0")/common.sh" "$@"
REPOSITORY_SERVICE=${FERRY_REPOSITORY:?set FERRY_REPOSITORY to the ferry-repository binary}
PY3=/usr/bin/python3  # Debian's, with python3-prometheus-client (scripts/install-deps)
"$PY3" -c 'import prometheus_client.parser' 2>/dev/null || { echo "SKIP: no python3-prometheus-client"; exit 77; }
MiB=$((1024 * 1024))

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -days 2 \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
MPORT=$(free_port)
"$FERRY" init --repo "$WORK/repo" --chunk-size 1M >/dev/null
"$REPOSITORY_SERVICE" grant --tokens "$WORK/tokens" --repository main >"$WORK/main.token"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/metrics.token"
METRICS_TOKEN=$(cat "$WORK/metrics.token")

expect_error 2 "needs --metrics-token-file" "$REPOSITORY_SERVICE" --no-tls --listen 127.0.0.1:0 \
  --repository "main=$WORK/repo" --tokens "$WORK/tokens" --metrics-listen 127.0.0.1:0
echo short >"$WORK/short.token"
expect_error 2 "16 or more characters" "$REPOSITORY_SERVICE" --no-tls --listen 127.0.0.1:0 \
  --repository "main=$WORK/repo" --tokens "$WORK/tokens" --metrics-listen 127.0.0.1:0 --metrics-token-file "$WORK/short.token"
ok "--metrics-listen wants a metrics token of 16 or more characters"

cat >"$WORK/repository.conf" <<CONF
listen = 127.0.0.1:$PORT
tls-cert = $WORK/cert.pem
tls-key = $WORK/key.pem
repository = main=$WORK/repo
tokens = $WORK/tokens
metrics-listen = 127.0.0.1:$MPORT
metrics-token-file = $WORK/metrics.token
CONF
"$REPOSITORY_SERVICE" --config "$WORK/repository.conf" >>"$WORK/service.log" 2>&1 &
SERVICE_PID=$!
on_exit "kill -9 $SERVICE_PID 2>/dev/null"
for _ in $(seq 100); do grep -q "/healthz and /metrics on" "$WORK/service.log" && break; sleep 0.1; done
grep -q "/healthz and /metrics on https://127.0.0.1:$MPORT" "$WORK/service.log" ||
  fail "no operations endpoint: $(cat "$WORK/service.log")"

http() {  # METHOD PATH [TOKEN] -> "STATUS BODY" (HTTPS, trusting cert.pem)
  "$PY3" - "$1" "https://localhost:$MPORT$2" "${3:-}" "$WORK/cert.pem" <<'PY'
import ssl, sys, urllib.request, urllib.error
method, url, token, ca = sys.argv[1:]
req = urllib.request.Request(url, method=method, headers={"Authorization": "Bearer " + token} if token else {})
try:
    with urllib.request.urlopen(req, timeout=10, context=ssl.create_default_context(cafile=ca)) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e: print(e.code, e.read().decode())
PY
}
status() { local out; out=$(http "$@"); echo "${out%% *}"; }  # METHOD PATH [TOKEN] -> the HTTP status
[[ $(http GET /healthz) == "200 ok" ]] || fail "/healthz: $(http GET /healthz)"
[[ $(status GET /metrics) == 401 ]] || fail "/metrics without a token: $(http GET /metrics)"
[[ $(status GET /metrics "$(cat "$WORK/main.token")") == 401 ]] || fail "/metrics took a repository token"
[[ $(status GET /metrics "${METRICS_TOKEN}x") == 401 ]] || fail "/metrics took a wrong token"
[[ $(status POST /healthz) == 405 ]] || fail "POST /healthz: $(http POST /healthz)"
[[ $(status GET /nope) == 404 ]] || fail "GET /nope: $(http GET /nope)"
# Plain HTTP on the HTTPS port gets no metrics.
plain=$(curl -s --max-time 5 "http://127.0.0.1:$MPORT/metrics" -H "Authorization: Bearer $METRICS_TOKEN" || true)
[[ $plain != *ferry_repository_* ]] || fail "/metrics answered over plain HTTP"
ok "over HTTPS with the service's certificate: /healthz for anyone; /metrics refuses no token, a repository token, a wrong one"

metric() {  # NAME LABELS-PYTHON-DICT -> the sample's value, an integer; fails when absent
  http GET /metrics "$METRICS_TOKEN" | "$PY3" -c '
import sys
from prometheus_client.parser import text_string_to_metric_families
status, _, text = sys.stdin.read().partition(" ")
assert status == "200", status
want_name, want_labels = sys.argv[1], eval(sys.argv[2])
found = [s.value for f in text_string_to_metric_families(text) for s in f.samples
         if s.name == want_name and all(s.labels.get(k) == v for k, v in want_labels.items())]
assert len(found) == 1, (want_name, want_labels, found)
print(int(found[0]))' "$1" "$2" || fail "metric $1 $2"
}
main="{'repository': 'main'}"
[[ $(metric ferry_repository_build_info "{}") == 1 ]] || fail "ferry_repository_build_info"
[[ $(metric ferry_repository_repositories "{}") == 1 ]] || fail "ferry_repository_repositories"
[[ $(metric ferry_repository_chunks_received_total "$main") == 0 ]] || fail "chunks received before any backup"
[[ $(metric ferry_repository_calls_total "{'method': 'insert'}") == 0 ]] || fail "insert calls before any backup"
text=$(http GET /metrics "$METRICS_TOKEN")  # whole: grep -q in a pipe would cut the writer off (pipefail)
grep -q '^# TYPE ferry_repository_chunks_stored_total counter$' <<<"$text" || fail "no TYPE line: $text"
grep -q '^# HELP ferry_repository_bytes_stored_total ' <<<"$text" || fail "no HELP line: $text"
ok "/metrics parses (prometheus_client), with HELP and TYPE lines, all counters at 0"

R=(--repo "ferry+tls://127.0.0.1:$PORT/main" --repo-token-file "$WORK/main.token" --repo-ca "$WORK/cert.pem"
   --repo-server-name localhost)
point() {  # IMAGE: a committed one-disk point of IMAGE through the service
  local id
  id=$("$FERRY" stage "${R[@]}" --vm vm1 --disk d0 --expires 1h)
  "$FERRY" --quiet backup-disk "${R[@]}" --point "$id" --disk d0 --file "$1"
  "$FERRY" commit "${R[@]}" --point "$id" >/dev/null
}
head -c $((8 * MiB)) /dev/urandom >"$WORK/disk.raw"  # 8 chunks of 1 MiB, each new and incompressible
point "$WORK/disk.raw"
received=$(metric ferry_repository_chunks_received_total "$main")
stored=$(metric ferry_repository_chunks_stored_total "$main")
bytes_received=$(metric ferry_repository_bytes_received_total "$main")
bytes_stored=$(metric ferry_repository_bytes_stored_total "$main")
[[ $received == 8 && $stored == 8 ]] || fail "chunks received $received, stored $stored (want 8 and 8)"
((bytes_stored >= 8 * MiB && bytes_stored == bytes_received)) ||
  fail "bytes received $bytes_received, stored $bytes_stored (want equal, at least 8 MiB)"
[[ $(metric ferry_repository_calls_total "{'method': 'insert'}") == 8 ]] || fail "insert calls"
[[ $(metric ferry_repository_calls_total "{'method': 'commit'}") == 1 ]] || fail "commit calls"
(($(metric ferry_repository_calls_total "{'method': 'open'}") >= 3)) || fail "open calls (stage, backup-disk, commit)"
[[ $(metric ferry_repository_points_committed_total "$main") == 1 ]] || fail "points committed"
# Stored bytes on disk: the chunk files hold what was stored.
on_disk=$(find "$WORK/repo/chunks" -type f -printf '%s\n' | awk '{s += $1} END {print s}')
[[ $on_disk == "$bytes_stored" ]] || fail "the chunk files hold $on_disk bytes, /metrics says $bytes_stored stored"
ok "a point through the service: 8 chunks received and stored ($bytes_stored bytes, as in the chunk files), calls by method, 1 point"

queried=$(metric ferry_repository_chunks_queried_total "$main")
missing=$(metric ferry_repository_chunks_missing_total "$main")
point "$WORK/disk.raw"  # the same data again: nothing new to send
[[ $(metric ferry_repository_chunks_stored_total "$main") == 8 ]] || fail "a second point of the same disk stored chunks"
[[ $(metric ferry_repository_points_committed_total "$main") == 2 ]] || fail "points committed after the second"
new_queried=$(metric ferry_repository_chunks_queried_total "$main")
new_missing=$(metric ferry_repository_chunks_missing_total "$main")
new_received=$(metric ferry_repository_chunks_received_total "$main")
((new_queried >= queried + 8 && new_missing == missing)) ||
  fail "the second point's lookups: queried $queried -> $new_queried, missing $missing -> $new_missing"
[[ $new_received == "$received" ]] || fail "the second point sent chunks again: received $received -> $new_received"
ok "the same disk again: its 8 chunks asked about, none missing, none sent or stored (deduplicated)"

# Every point names the Ferry that committed it (docs/repository-format.md, "Compatibility").
"$FERRY" list "${R[@]}" --json | python3 -c '
import json, sys
points = json.load(sys.stdin)["points"]
assert len(points) == 2 and all(p.get("writer") == sys.argv[1] for p in points), points' "$("$REPOSITORY_SERVICE" --version | sed 's/^ferry-repository /ferry /')" ||
  fail "ferry list --json: no writer on the points"
grep -q "\"writer\":\"ferry " "$WORK/repo/ferry-repository.json" || fail "ferry-repository.json names no writer"
ok "ferry list --json names each point's writer"

errors=$(metric ferry_repository_call_errors_total "{'kind': 'bad_input'}")
echo "fr1-not-a-token" >"$WORK/bad.token"
expect_error 2 "repository token refused" "$FERRY" list --repo "ferry+tls://127.0.0.1:$PORT/main" \
  --repo-token-file "$WORK/bad.token" --repo-ca "$WORK/cert.pem" --repo-server-name localhost
[[ $(metric ferry_repository_call_errors_total "{'kind': 'bad_input'}") == $((errors + 1)) ]] ||
  fail "a refused open is not counted as a bad_input error"
"$FERRY" gc "${R[@]}" --window 0 --json >/dev/null
[[ $(metric ferry_repository_gc_runs_total "$main") == 1 ]] || fail "gc runs"
[[ $(metric ferry_repository_calls_total "{'method': 'collectGarbage'}") == 1 ]] || fail "collectGarbage calls"
[[ $(metric ferry_repository_connections "{}") == 0 ]] || fail "connections left open by finished commands"
ok "a refused token counts as a bad_input error, a GC as a GC run; no connection left open"
kill -TERM "$SERVICE_PID"
wait "$SERVICE_PID" || fail "ferry-repository exited $? on SIGTERM: $(tail -5 "$WORK/service.log")"
ok "SIGTERM stops the service and its operations endpoint cleanly (exit 0)"
