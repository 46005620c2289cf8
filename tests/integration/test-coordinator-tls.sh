#!/usr/bin/env bash
# TLS and tokens everywhere data crosses hosts: the web API over HTTPS and the
# worker RPC over TLS with one certificate; refused without the CA, refused
# in plain text, refused with a wrong token; a job runs end to end over TLS.
. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -days 2 \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
DATA=$WORK/coord
coord_init "$DATA"
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem"
[[ $API == https://* ]] || fail "API not on https: $API"
ok "coordinator on $API with TLS"

C=("$FERRY" --coordinator "$API")
"${C[@]}" --ca "$WORK/cert.pem" status >/dev/null || fail "status over https with the CA"
expect_error 5 "" "${C[@]}" status
expect_error 2 "speaks HTTPS" "$FERRY" --coordinator "http://${API#https://}" --ca "$WORK/cert.pem" status
FERRY_TOKEN=fy_0000000000000000000000000000000000000000 expect_error 2 "refused the token" "${C[@]}" --ca "$WORK/cert.pem" status
ok "API: refused without the CA, in plain HTTP, and with a wrong token"

export FERRY_CA=$WORK/cert.pem
"${C[@]}" repo add main --location /srv/ferry >/dev/null
GOOD=$("${C[@]}" worker add w1 | tail -1)
worker_file() {
  printf '[{"token": "%s", "host": "h1", "platform": "proxmox", "cluster": "", "slots": 2, "vms": [{"name": "vm1", "uuid": "u1", "state": "running", "tags": [], "disks": [{"name": "scsi0", "size": 1048576, "format": "raw"}, {"name": "scsi1", "size": 1048576, "format": "raw"}]}]}]' "$1" >"$2"
}
worker_file "$GOOD" "$WORK/good.json"
worker_file fy_1111111111111111111111111111111111111111 "$WORK/bad.json"

sim_start plain --workers "$WORK/good.json"
sim_start badtoken --workers "$WORK/bad.json" --tls-ca "$WORK/cert.pem" --tls-name localhost
sleep 2
[[ $("${C[@]}" worker show 1 | jpy 'd["state"]') == new ]] || fail "a worker registered without TLS or with a wrong token"
grep -q "worker token refused" "$WORK/sim-badtoken.log" || { cat "$WORK/sim-badtoken.log"; fail "wrong worker token not refused"; }
grep -q "worker token refused" "$DATA/log" || fail "coordinator did not log the refusal"
grep -q "$GOOD" "$DATA/log" && fail "the worker token leaked into the coordinator log"
kill -9 "${SIM_PID[plain]}" "${SIM_PID[badtoken]}"
ok "RPC: plain-text client and wrong token refused; no token in the log"

sim_start tls --workers "$WORK/good.json" --tls-ca "$WORK/cert.pem" --tls-name localhost --task-ms 100
wait_for "w1 connected over TLS" 20 bash -c "[[ \$('$FERRY' --coordinator $API worker show 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"state\"])') == connected ]]"
"${C[@]}" job create tls --repo 1 --vm vm1 >/dev/null
"${C[@]}" job start tls --watch >"$WORK/watch.txt" || { cat "$WORK/watch.txt"; fail "job over TLS did not succeed"; }
grep -q "session 1 succeeded" "$WORK/watch.txt" || fail "watch did not report success"
[[ $("${C[@]}" point list --json | jpy 'len(d["points"])') == 1 ]] || fail "no restore point recorded"
ok "a job ran end to end over TLS; 'job start --watch' followed it to success"
