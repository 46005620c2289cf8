#!/usr/bin/env bash
# ferry-worker and an encrypted repository (docs/worker.md, "Encrypted
# repositories"; docs/encryption.md): a coordinator job into an encrypted
# local repository (made with ferry init --encrypt, registered by location).
# A worker without a key directory, then one whose key directory holds only
# another repository's key: the session fails, not retried, naming the
# repository and the fingerprint it needs, and the coordinator shows it. A
# worker with the key file in its key directory: the backup succeeds (chunks
# encrypted, disk records with their HMAC), the point restores bit-exact with
# ferry restore --key-file and through the API (POST /restores, run by the
# worker with its key), verify with the key is clean, the coordinator's
# after-session work (space) runs without the key, and neither the
# passphrase nor the key's recovery copy is anywhere in the coordinator's data.
. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"

MiB=$((1024 * 1024))
MARKER="FERRY-WORKER-KEYS-MARKER-r8Tn2"
DATA=$WORK/coord
coord_init "$DATA"
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 \
  --heartbeat-interval-ms 500 --heartbeat-deadline-ms 4000

export FERRY_PASSPHRASE="the worker's key passphrase"
mkdir -p "$WORK/keys-none" "$WORK/keys" && chmod 700 "$WORK/keys"
"$FERRY" init --repo "$WORK/repo" --encrypt --key-file "$WORK/vault.key" --chunk-size 1M --compression-level 0 2>/dev/null
FP=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fingerprint"])' "$WORK/vault.key")
FERRY_PASSPHRASE=other "$FERRY" key create --key-file "$WORK/keys-none/other.key" >/dev/null 2>&1
echo "not a key" >"$WORK/keys-none/notes.key"
api POST /repositories "{\"name\": \"vault\", \"location\": \"$WORK/repo\", \"task_slots\": 4}" >/dev/null

mkdir -p "$WORK/qmp"
make_data_disk "$WORK/d0.raw" raw $((20 * MiB))
python3 -c 'import sys; m = sys.argv[1].encode(); sys.stdout.buffer.write((m * (65536 // len(m) + 1))[:65536])' \
  "$MARKER" | dd of="$WORK/d0.raw" bs=64K seek=40 conv=notrunc status=none
VM_NAME=vm-k vm_start "$WORK/vm-k" "virtio0=$WORK/d0.raw"
ln -sf "$WORK/vm-k/qmp.sock" "$WORK/qmp/101.qmp"
worker_token wa >"$WORK/wa.token"
start_worker() {  # ARGS...: worker "a" for host-a, the VM's QMP directory
  worker_start a --token-file "$WORK/wa.token" --host host-a --qmp-dir "$WORK/qmp" \
    --runtime-dir "$WORK/run" --scratch-dir "$WORK/scratch" --inventory-interval 1s "$@"
  wait_for "worker a connected" 30 worker_connected
}
worker_connected() { [[ $(api GET /workers | jpy "[w['state'] for w in d['workers'] if w['name'] == 'wa'][0]") == connected ]]; }
JOB=$(api POST /jobs "{\"name\": \"enc\", \"repository\": 1, \"selection\": {\"vms\": [\"vm-k\"]}, \"retries\": {\"count\": 2, \"interval_s\": 0}}" | jpy 'd["id"]')
run_session() {  # -> $S, its JSON in $WORK/s$S.json and log in $WORK/log$S.json
  S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
  wait_for "session $S to end" 120 session_ended "$S"
  api GET "/sessions/$S" >"$WORK/s$S.json"
  api GET "/sessions/$S/log" >"$WORK/log$S.json"
}
# expect_key_failure MESSAGE: the session failed, once (no retry), saying MESSAGE.
expect_key_failure() {
  run_session
  [[ $(jpy 'd["state"]' <"$WORK/s$S.json") == failed ]] || fail "session $S without the key: $(cat "$WORK/s$S.json")"
  grep -q -F "$1" "$WORK/s$S.json" || fail "session $S does not say '$1': $(cat "$WORK/s$S.json")"
  grep -q -F "$1" "$WORK/log$S.json" || fail "session $S's log does not say '$1'"
  # The coordinator serves its local repository to the worker: named by its service address.
  grep -q -F "repository 'vault' (ferry://" "$WORK/s$S.json" || fail "session $S does not name the repository"
  ! grep -q "retry 1 of" "$WORK/log$S.json" || fail "a missing key was retried: $(cat "$WORK/log$S.json")"
  [[ -z $(ferry_objects "$WORK/vm-k") ]] || fail "a snapshot stayed in the VM: $(ferry_objects "$WORK/vm-k")"
}

# --- no key directory ---
start_worker
expect_key_failure "is encrypted with the key of fingerprint $FP, and this worker has no key directory"
ok "session $S, a worker without a key directory: failed, naming the repository and fingerprint $FP"
worker_stop a

# --- a key directory without this repository's key ---
start_worker --key-dir "$WORK/keys-none"
expect_key_failure "is encrypted with the key of fingerprint $FP, and no key file in this worker's key directory $WORK/keys-none (*.key) records that fingerprint"
grep -q "skipping key file $WORK/keys-none/notes.key" "$WORK/log$S.json" || fail "the broken key file was not named"
[[ -z $(points "$WORK/repo") ]] || fail "a failed session left a point"
ok "session $S, a key directory with another repository's key only: failed, naming what it needs"
worker_stop a

# --- the key file in the key directory, one passphrase file for the directory ---
cp "$WORK/vault.key" "$WORK/keys/vault.key"
cp "$WORK/keys-none/other.key" "$WORK/keys/other.key"
printf '%s\n' "$FERRY_PASSPHRASE" >"$WORK/keys.pass" && chmod 600 "$WORK/keys.pass"
cat >"$WORK/wa.conf" <<EOF
key-dir = $WORK/keys
passphrase-file = $WORK/keys.pass
EOF
FERRY_PASSPHRASE='' start_worker --config "$WORK/wa.conf"  # the passphrase from the file
snapshot_copy "$WORK/d0.raw" "$WORK/ref.raw" "$WORK/vm-k" virtio0
run_session
[[ $(jpy 'd["state"]' <"$WORK/s$S.json") == succeeded ]] || { cat "$WORK/log$S.json" >&2; fail "session $S with the key: $(cat "$WORK/s$S.json")"; }
P=$(jpy '[p["point_id"] for p in d["snapshots"]][0]' <"$WORK/s$S.json")
grep -q -F "): key $FP from $WORK/keys/vault.key" "$WORK/log$S.json" ||
  fail "the task log does not say which key file it used"
grep -q '"index_hmac":"' "$WORK/repo/points/$P/manifest.json" || fail "the point's disk record has no index_hmac"
! grep -r -q -a -F "$MARKER" "$WORK/repo" || fail "the marker is in the repository: $(grep -r -l -a -F "$MARKER" "$WORK/repo")"
ok "session $S, the worker with the key file: point $P, encrypted (no plaintext marker, disk records with their HMAC)"

# What the coordinator does after the session needs no key (space, retention, GC).
lifecycle_ended() { [[ $(api GET "/sessions/$S" | jpy '(d["lifecycle"] or {}).get("state", "")') =~ ^(done|failed)$ ]]; }
wait_for "session $S's lifecycle" 60 lifecycle_ended
api GET "/sessions/$S" >"$WORK/s$S.json"
[[ $(jpy 'd["lifecycle"]["state"]' <"$WORK/s$S.json") == "done" ]] || fail "the lifecycle after session $S: $(jpy 'd["lifecycle"]' <"$WORK/s$S.json")"
(($(jpy 'd["lifecycle"]["space"]["stored_bytes"]' <"$WORK/s$S.json") > 0)) || fail "no space measured: $(jpy 'd["lifecycle"]' <"$WORK/s$S.json")"
ok "the coordinator's after-session work on the encrypted repository, without the key: done (space measured)"

"$FERRY" restore --repo "$WORK/repo" --point "$P" --disk virtio0 --to "$WORK/r0.raw" --key-file "$WORK/vault.key"
cmp "$WORK/r0.raw" "$WORK/ref.raw" || fail "the point does not restore bit-exact"
"$FERRY" verify --repo "$WORK/repo" --key-file "$WORK/vault.key" >"$WORK/verify.log" 2>&1 && grep -q '^OK' "$WORK/verify.log" ||
  fail "verify with the key: $(cat "$WORK/verify.log")"
ok "the point restores bit-exact with ferry restore --key-file; verify with the key is clean"

# A restore through the API: the worker uses its key.
PR=$(api GET "/points?vm=vm-k" | jpy 'd["points"][0]["id"]')
mkdir -p "$WORK/out"
R=$(api POST /restores "{\"point\": $PR, \"disk\": \"virtio0\", \"host\": \"host-a\", \"target\": {\"type\": \"file\", \"path\": \"$WORK/out/r.raw\"}}" | jpy 'd["session"]')
wait_for "restore session $R" 60 session_ended "$R"
[[ $(session_state "$R") == succeeded ]] || { api GET "/sessions/$R/log" >&2; fail "restore session $R: $(api GET "/sessions/$R")"; }
cmp "$WORK/out/r.raw" "$WORK/ref.raw" || fail "the API restore is not bit-exact"
ok "restore session $R through the API, run by the worker with its key: bit-exact"

# The coordinator never had the key.
"$FERRY" key recovery --key-file "$WORK/vault.key" | sed -n 's/^key [0-9]: //p' | tr -d ' \n' >"$WORK/master.hex"
[[ $(wc -c <"$WORK/master.hex") == 64 ]] || fail "the recovery copy: $(cat "$WORK/master.hex")"
! grep -r -q -a -F "$FERRY_PASSPHRASE" "$DATA" "$WORK/worker-a.log" || fail "the passphrase is in the coordinator's data or the worker's log"
! grep -r -q -a -i -F "$(cat "$WORK/master.hex")" "$DATA" "$WORK/worker-a.log" || fail "the master key is in the coordinator's data"
worker_stop a
vm_stop "$WORK/vm-k"
ok "neither the passphrase nor the master key is in the coordinator's data or the worker's log"
