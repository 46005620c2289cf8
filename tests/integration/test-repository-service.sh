#!/usr/bin/env bash
# The repository service end to end (issue 12): a separate ferry-repository
# process serves the repository over TLS; a coordinator and a ferry-worker
# back a VM up into it. Points verify and restore bit-exact through the
# service; a second full read of unchanged disks sends no chunk payload; the
# service stopped for 20 s mid-disk, and killed -9 mid-disk, the disk resumes
# and the bytes sent again stay within the unacknowledged window (counted);
# a token
# opens only its repositories (per-worker tokens the coordinator mints with a
# key shared with the service, and tokens of the service's tokens file); no
# token appears in any log.
. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"
REPOSITORY_SERVICE=${FERRY_REPOSITORY:?set FERRY_REPOSITORY to the ferry-repository binary}
MiB=$((1024 * 1024))
WINDOW=$((32 * MiB))  # RepositoryEndpoint::upload_window_bytes

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -days 2 \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$WORK/store"
"$FERRY" init --repo "$WORK/store/main" --chunk-size 1M >/dev/null
"$FERRY" init --repo "$WORK/store/other" --chunk-size 1M >/dev/null
TOKEN_MAIN=$("$REPOSITORY_SERVICE" grant --tokens "$WORK/tokens" --repository main)
TOKEN_OTHER=$("$REPOSITORY_SERVICE" grant --tokens "$WORK/tokens" --repository other)
echo "$TOKEN_MAIN" >"$WORK/main.token"
echo "$TOKEN_OTHER" >"$WORK/other.token"
# The key the coordinator mints per-worker tokens with.
KEY=$("$REPOSITORY_SERVICE" key --key-file "$WORK/coordinator.key")
[[ $KEY == frk-* && $(stat -c %a "$WORK/coordinator.key") == 600 ]] || fail "key: $KEY"
expect_error 2 "exists" "$REPOSITORY_SERVICE" key --key-file "$WORK/coordinator.key"
[[ $(stat -c %a "$WORK/tokens") == 600 ]] || fail "the tokens file is not 0600"
grep -q "$TOKEN_MAIN" "$WORK/tokens" && fail "the tokens file holds a token, not its hash"
cat >"$WORK/repository.conf" <<CONF
listen = 127.0.0.1:$PORT
tls-cert = $WORK/cert.pem
tls-key = $WORK/key.pem
repository = main=$WORK/store/main
repository = other=$WORK/store/other
tokens = $WORK/tokens
coordinator-key = $WORK/coordinator.key
CONF
SERVICE_PID=
service_start() {
  "$REPOSITORY_SERVICE" --config "$WORK/repository.conf" >>"$WORK/service.log" 2>&1 &
  SERVICE_PID=$!
  on_exit "kill -9 $SERVICE_PID 2>/dev/null"
  wait_for "the repository service on port $PORT" 20 grep -q "serving 2 repositories" "$WORK/service.log"
}
service_count() { grep -c "serving 2 repositories" "$WORK/service.log"; }
service_start
ok "ferry-repository serves main and other over TLS on 127.0.0.1:$PORT"

URL=ferry+tls://127.0.0.1:$PORT/main
R=(--repo "$URL" --repo-token-file "$WORK/main.token" --repo-ca "$WORK/cert.pem" --repo-server-name localhost)
"$FERRY" list "${R[@]}" >/dev/null || fail "ferry list through the service"
expect_error 2 "is not open to this token" "$FERRY" list --repo "$URL" --repo-token-file "$WORK/other.token" \
  --repo-ca "$WORK/cert.pem" --repo-server-name localhost
echo "fr1-not-a-token" >"$WORK/bad.token"
expect_error 2 "repository token refused" "$FERRY" list --repo "$URL" --repo-token-file "$WORK/bad.token" \
  --repo-ca "$WORK/cert.pem" --repo-server-name localhost
expect_error 2 "needs a token" env -u FERRY_REPOSITORY_TOKEN "$FERRY" list --repo "$URL" --repo-ca "$WORK/cert.pem"
ok "a token opens its own repositories only; a wrong token and none are refused"

# --- a coordinator, one worker, one VM ---
DATA=$WORK/coord
coord_init "$DATA"
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --heartbeat-interval-ms 500 --heartbeat-deadline-ms 4000
# The record holds the shared key: every worker gets tokens of its own, for this repository only.
api POST /repositories "{\"name\": \"main\", \"location\": \"$URL\", \"token\": \"$KEY\", \"task_slots\": 4}" >"$WORK/repo.json"
[[ $(jpy 'd["token_set"]' <"$WORK/repo.json") == True ]] || fail "token_set: $(cat "$WORK/repo.json")"
grep -q "$KEY" "$WORK/repo.json" && fail "the API returned the repository key"
mkdir -p "$WORK/qmp"
random_disk() {  # PATH FORMAT MiB: incompressible data throughout, so every chunk is new and full size
  head -c $(($3 * MiB)) /dev/urandom >"$1.raw"
  if [[ $2 == raw ]]; then mv "$1.raw" "$1"; else qemu-img convert -q -f raw -O qcow2 "$1.raw" "$1" && rm "$1.raw"; fi
}
random_disk "$WORK/vm1-virtio0.qcow2" qcow2 96
make_data_disk "$WORK/vm1-virtio1.raw" raw $((8 * MiB)) 12
random_disk "$WORK/vm2-virtio0.raw" raw 64
VM_NAME=vm1 vm_start "$WORK/vm-vm1" "virtio0=$WORK/vm1-virtio0.qcow2" "virtio1=$WORK/vm1-virtio1.raw"
VM_NAME=vm2 vm_start "$WORK/vm-vm2" "virtio0=$WORK/vm2-virtio0.raw"
ln -sf "$WORK/vm-vm1/qmp.sock" "$WORK/qmp/101.qmp"
ln -sf "$WORK/vm-vm2/qmp.sock" "$WORK/qmp/102.qmp"
worker_token w1 >"$WORK/w1.token"
# Reads capped at 8 MiB/s: a 96 MiB disk takes ~12 s, time to stop the service mid-disk.
worker_start w1 --token-file "$WORK/w1.token" --host host-a --qmp-dir "$WORK/qmp" --slots 2 \
  --runtime-dir "$WORK/run-a" --scratch-dir "$WORK/scratch-a" --inventory-interval 1s \
  --repository-ca "$WORK/cert.pem" --repository-name localhost --repository-retry 2s --rate-limit 8M
vm_count() { [[ $(api GET /vms | jpy "len(d['vms'])") -ge 2 ]]; }
wait_for "the worker and its VMs" 30 vm_count

disks_of() { case $1 in vm1) echo virtio0 virtio1 ;; *) echo virtio0 ;; esac; }
run_job() {  # JOB VM -> $S, reference copies in $WORK/ref-$S-DISK; $HOOK runs while the session runs
  local disk
  for disk in $(disks_of "$2"); do snapshot_copy "$(ls "$WORK/$2-$disk".*)" "$WORK/ref-next-$disk" "$WORK/vm-$2" "$disk"; done
  S=$(api POST "/jobs/$1/start" | jpy 'd["session"]')
  ${HOOK:-true}
  wait_for "session $S to end" 300 session_ended "$S"
  api GET "/sessions/$S" >"$WORK/s$S.json"
  [[ $(jpy 'd["state"]' <"$WORK/s$S.json") == succeeded ]] ||
    { api GET "/sessions/$S/log" >&2; tail -30 "$WORK/worker-w1.log" >&2; fail "session $S: $(jpy '[d["state"], d.get("reason")]' <"$WORK/s$S.json")"; }
  for disk in $(disks_of "$2"); do mv "$WORK/ref-next-$disk" "$WORK/ref-$S-$disk"; done
}
check_point() {  # S VM: verify through the service; every disk restores bit-exact through it
  local point disk
  point=$(jpy 'd["snapshots"][0]["point_id"]' <"$WORK/s$1.json")
  "$FERRY" verify "${R[@]}" >"$WORK/verify.log" 2>&1 || fail "verify through the service: $(cat "$WORK/verify.log")"
  for disk in $(disks_of "$2"); do
    rm -f "$WORK/restored"
    "$FERRY" restore "${R[@]}" --point "$point" --disk "$disk" --to "$WORK/restored" 2>/dev/null ||
      fail "restore of $2/$disk through the service"
    cmp -s "$WORK/restored" "$WORK/ref-$1-$disk" || fail "session $1: $2/$disk (point $point) does not restore bit-exact"
  done
}
# The worker's closing line for a disk: "disk D: full, read X MiB of Y MiB (...), stored S MiB in N new
# chunks; sent B bytes to the repository, A of them again after a lost connection" -> "READ_MIB B A".
last_sent() {
  grep -o "disk $1: [^;]*; sent [0-9]* bytes to the repository, [0-9]* of them" "$WORK/worker-w1.log" | tail -1 |
    sed -E 's/.*read ([0-9.]+) MiB of.*sent ([0-9]+) bytes to the repository, ([0-9]+) of them/\1 \2 \3/'
}
task_done() {  # DISK: bytes done of the running session's task for DISK
  api GET "/sessions/$S" | jpy "([t['bytes_done'] for t in d['tasks'] if t['disk'] == '$1'] or [0])[0]"
}
busy_mid_disk() { (($(task_done virtio0) >= 16 * MiB)); }

# --- the service stopped for 20 s mid-disk, on the first (full) backup ---
stop_for_20s() {
  wait_for "virtio0 mid-disk" 60 busy_mid_disk
  kill -TERM "$SERVICE_PID"; wait "$SERVICE_PID" 2>/dev/null || true
  STOPPED_AT=$(task_done virtio0)
  sleep 20
  service_start
}
JOB=$(api POST /jobs '{"name": "j1", "repository": 1, "selection": {"vms": ["vm1"]}, "retries": {"count": 0, "interval_s": 0}}' | jpy 'd["id"]')
HOOK=stop_for_20s run_job "$JOB" vm1; S1=$S
((STOPPED_AT < 80 * MiB)) || fail "the service was stopped too late ($STOPPED_AT bytes done)"
grep -q "connection lost" "$WORK/worker-w1.log" || fail "the worker did not notice the lost connection"
grep -q "connected again" "$WORK/worker-w1.log" || fail "the worker did not reconnect"
read -r read_mib sent resent <<<"$(last_sent virtio0)"
((resent <= WINDOW)) || fail "sent again $resent bytes, more than the window ($WINDOW)"
# Resumed, not restarted: the disk was read once, and what was sent is the disk's data once plus the resends.
python3 -c "import sys; r = float(sys.argv[1]); assert 95 <= r <= 96.5, r" "$read_mib" || fail "virtio0 read $read_mib MiB (restarted?)"
((sent - resent <= 97 * MiB && sent - resent >= 95 * MiB)) || fail "virtio0 sent $sent bytes, $resent again"
check_point "$S1" vm1
# 20 s of waiting for the service: the disk's bottleneck is the network, and
# a service's store time is never target time.
grep -Eq "disk virtio0: .*; busy: source [0-9]+%, compute [0-9]+%, network [0-9]+%, target -; bottleneck: network$" \
  "$WORK/worker-w1.log" || fail "virtio0's closing line names no network bottleneck: $(grep "disk virtio0: " "$WORK/worker-w1.log" | tail -1)"
[[ $(jpy "[t['bottleneck'] for t in d['tasks'] if t['disk'] == 'virtio0'][0]" <"$WORK/s$S1.json") == network ]] ||
  fail "session $S1's virtio0 task: $(jpy "[t for t in d['tasks'] if t['disk'] == 'virtio0']" <"$WORK/s$S1.json")"
ok "session $S1: the stall shows as the network bottleneck (log and API)"
ok "session $S1: the service stopped for 20 s mid-disk (at $((STOPPED_AT / MiB)) MiB); the disk resumed without re-reading ($read_mib MiB read), $resent bytes sent again (window $WINDOW); verified and restored bit-exact through ferry-repository over TLS"
[[ -n $(ls "$WORK/store/main/points") ]] || fail "no point in the service's directory"

# A second full read (a new chain: no bitmap to trust) of the unchanged disks: every chunk is there already.
JOB2=$(api POST /jobs '{"name": "j2", "repository": 1, "chain": {"name": "second"}, "selection": {"vms": ["vm1"]}, "retries": {"count": 0, "interval_s": 0}}' | jpy 'd["id"]')
run_job "$JOB2" vm1; S2=$S
read -r read_mib sent resent <<<"$(last_sent virtio0)"
python3 -c "import sys; assert float(sys.argv[1]) >= 95, sys.argv[1]" "$read_mib" || fail "session $S2 was not a full read ($read_mib MiB)"
((sent == 0)) || fail "a full read of unchanged data sent $sent bytes of chunk payload"
check_point "$S2" vm1
ok "session $S2: a full read ($read_mib MiB) of unchanged disks sent no chunk payload"

# --- kill -9 of the service mid-disk ---
kill9_and_restart() {
  wait_for "virtio0 mid-disk" 60 busy_mid_disk
  kill -9 "$SERVICE_PID"; wait "$SERVICE_PID" 2>/dev/null || true
  sleep 3
  service_start
}
JOB3=$(api POST /jobs '{"name": "j3", "repository": 1, "selection": {"vms": ["vm2"]}, "retries": {"count": 0, "interval_s": 0}}' | jpy 'd["id"]')
HOOK=kill9_and_restart run_job "$JOB3" vm2; S3=$S
read -r read_mib sent resent <<<"$(last_sent virtio0)"
((resent <= WINDOW)) || fail "sent again $resent bytes after kill -9, more than the window"
python3 -c "import sys; r = float(sys.argv[1]); assert 63 <= r <= 64.5, r" "$read_mib" || fail "vm2 read $read_mib MiB (restarted?)"
check_point "$S3" vm2
[[ $(service_count) -ge 3 ]] || fail "the service was not restarted"
ok "session $S3: the service killed -9 mid-disk; the disk resumed ($resent bytes again), the repository verifies, restored bit-exact"

# --- nothing secret in any log ---
for f in "$WORK/service.log" "$WORK/worker-w1.log" "$DATA/log"; do
  for t in "$TOKEN_MAIN" "$TOKEN_OTHER" "$(cat "$WORK/w1.token")" "$KEY" frw-; do
    grep -qF "$t" "$f" && fail "a token appears in $f"
  done
done
ok "no token in the service's, the worker's or the coordinator's log"
worker_stop w1
kill -TERM "$SERVICE_PID"; wait "$SERVICE_PID" 2>/dev/null || true
