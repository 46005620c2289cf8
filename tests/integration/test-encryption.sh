#!/usr/bin/env bash
# An encrypted repository (docs/encryption.md): a running VM with two disks of
# the same data, one of them holding a known plaintext marker; backup through
# QMP; the marker appears in no stored file; the two disks' chunks are stored
# once, and so are another VM's of the same data (its backup stores nothing
# new); restore with the key is bit-exact, without a key or with another key
# refused; verify without the key checks the ciphertext and says so, with the
# key checks everything; a flipped byte in a chunk is caught without the key;
# the key's recovery copy and a passphrase change.
. "$(dirname "$0")/common.sh" "$@"

export FERRY_PASSPHRASE="it's a test passphrase"
MARKER="FERRY-ENCRYPTION-TEST-MARKER-q7Zx3"

make_data_disk "$WORK/d0.raw" raw 24M
# 64 KiB of the marker, repeated, at 5 MiB (inside data the backup reads).
python3 -c 'import sys; m = sys.argv[1].encode(); sys.stdout.buffer.write((m * (65536 // len(m) + 1))[:65536])' \
  "$MARKER" | dd of="$WORK/d0.raw" bs=64K seek=80 conv=notrunc status=none
cp "$WORK/d0.raw" "$WORK/d1.raw"
grep -q -a -F "$MARKER" "$WORK/d0.raw" || fail "the marker is not in the disk"

# The control: stored plain (level 0: no compression), the marker is found,
# so the check below could fail.
"$FERRY" init --repo "$WORK/plain" --compression-level 0
"$FERRY" stage --repo "$WORK/plain" --point p1 --vm it-vm --disk d0 >/dev/null
"$FERRY" backup-disk --repo "$WORK/plain" --point p1 --disk d0 --file "$WORK/d0.raw" 2>/dev/null
grep -r -q -a -F "$MARKER" "$WORK/plain" || fail "control: the marker is not in a plain repository's files"
ok "control: a plain repository's chunks hold the marker"

VM_NAME=it-vm vm_start "$WORK/vm" "virtio0=$WORK/d0.raw" "virtio1=$WORK/d1.raw"

# Init with a new key file; level 0 again, so only the encryption hides the marker.
"$FERRY" init --repo "$WORK/repo" --encrypt --key-file "$WORK/repo.key" --compression-level 0 2>"$WORK/init.log"
grep -q "recovery copy" "$WORK/init.log" || fail "init did not tell to print the recovery copy: $(cat "$WORK/init.log")"
[[ $(stat -c %a "$WORK/repo.key") == 600 ]] || fail "key file mode is $(stat -c %a "$WORK/repo.key")"
grep -q '"format":"ferry-repository-v3"' "$WORK/repo/ferry-repository.json" || fail "not a v3 repository"
grep -q '"encryption":{"cipher":"aes-256-gcm","key_fingerprint":"' "$WORK/repo/ferry-repository.json" ||
  fail "no encryption in the config: $(cat "$WORK/repo/ferry-repository.json")"
! grep -q "$FERRY_PASSPHRASE" "$WORK/init.log" "$WORK/repo.key" || fail "the passphrase was written out"
ok "encrypted repository created (key file 0600)"

expect_error 2 "is encrypted: give --key-file" "$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock"
point=$("$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" --key-file "$WORK/repo.key")
[[ $(points "$WORK/repo") == "$point" ]] || fail "list does not show exactly $point"
ok "backup made point $point"

! grep -r -q -a -F "$MARKER" "$WORK/repo" || fail "the marker is in $(grep -r -l -a -F "$MARKER" "$WORK/repo")"
! grep -r -q -a -F "${MARKER:0:16}" "$WORK/repo" || fail "part of the marker is in the repository"
ok "the plaintext marker appears in no file of the repository"

# Same data on both disks: the same keyed digests, each chunk stored once.
idx0=$WORK/repo/points/$point/$(field "$point" virtio0 index)
idx1=$WORK/repo/points/$point/$(field "$point" virtio1 index)
[[ $(digests "$idx0") == "$(digests "$idx1")" ]] || fail "the two disks' indexes differ"
want=$(digests "$idx0" | wc -l)
have=$(find "$WORK/repo/chunks" -type f | wc -l)
((want > 10 && have == want)) || fail "$have chunk files for $want distinct chunks"
# Keyed digests: no chunk is named by the SHA-256 of its data.
chunk0=$(python3 -c 'import sys; d = open(sys.argv[1], "rb").read()[:1 << 20]; import hashlib; print(hashlib.sha256(d).hexdigest())' "$WORK/d0.raw")
[[ -z $(find "$WORK/repo/chunks" -name "$chunk0") ]] || fail "a chunk is named by its SHA-256"
[[ $(head -c 8 "$(find "$WORK/repo/chunks" -type f | head -1)") == FRYCHK02 ]] || fail "chunks are not format v2"
ok "two disks of the same data: $have chunk files, each stored once, named by HMAC"

# Another VM with the same data: its backup stores nothing new.
cp "$WORK/d0.raw" "$WORK/e0.raw"
VM_NAME=it-vm2 vm_start "$WORK/vm2" "virtio0=$WORK/e0.raw"
point2=$("$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm2/qmp.sock" --key-file "$WORK/repo.key")
new2=$(field "$point2" virtio0 stats.new_chunks)
stored2=$(field "$point2" virtio0 stats.stored_bytes)
reused2=$(field "$point2" virtio0 stats.reused_chunks)
after=$(find "$WORK/repo/chunks" -type f | wc -l)
((new2 == 0 && stored2 == 0 && reused2 >= want && after == have)) ||
  fail "a second VM of the same data stored $new2 new chunks ($stored2 bytes), reused $reused2 of $want; chunk files $have -> $after"
vm_stop "$WORK/vm2"
ok "a second VM of the same data: 0 new chunks, 0 bytes stored, $reused2 reused (point $point2)"

"$FERRY" restore --repo "$WORK/repo" --point "$point" --disk virtio0 --to "$WORK/r0.raw" --key-file "$WORK/repo.key"
cmp "$WORK/d0.raw" "$WORK/r0.raw" || fail "restore with the key differs"
ok "restore with the key is bit-exact"

expect_error 2 "repository $WORK/repo is encrypted: give --key-file" \
  "$FERRY" restore --repo "$WORK/repo" --point "$point" --disk virtio0 --to "$WORK/x.raw"
FERRY_PASSPHRASE=other "$FERRY" key create --key-file "$WORK/other.key" >/dev/null 2>&1
other_fp=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fingerprint"])' "$WORK/other.key")
repo_fp=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["encryption"]["key_fingerprint"])' "$WORK/repo/ferry-repository.json")
expect_error 2 "(fingerprint $other_fp) is not the key of repository $WORK/repo (fingerprint $repo_fp)" \
  env FERRY_PASSPHRASE=other "$FERRY" restore --repo "$WORK/repo" --point "$point" --disk virtio0 --to "$WORK/x.raw" \
  --key-file "$WORK/other.key"
expect_error 2 "wrong passphrase for key file $WORK/repo.key" \
  env FERRY_PASSPHRASE=wrong "$FERRY" restore --repo "$WORK/repo" --point "$point" --disk virtio0 --to "$WORK/x.raw" \
  --key-file "$WORK/repo.key"
[[ ! -e $WORK/x.raw ]] || fail "a refused restore left $WORK/x.raw"

"$FERRY" verify --repo "$WORK/repo" >"$WORK/verify.out" || fail "verify without the key failed: $(cat "$WORK/verify.out")"
grep -q "encrypted repository, no key given: checked ciphertext integrity only" "$WORK/verify.out" ||
  fail "verify without the key did not say what it checked: $(cat "$WORK/verify.out")"
grep -q '^OK' "$WORK/verify.out" || fail "verify without the key not clean"
ok "verify without the key: clean, ciphertext only"
"$FERRY" verify --repo "$WORK/repo" --key-file "$WORK/repo.key" >"$WORK/verify-key.out" ||
  fail "verify with the key failed: $(cat "$WORK/verify-key.out")"
grep -q '^OK' "$WORK/verify-key.out" && ! grep -q "ciphertext" "$WORK/verify-key.out" || fail "verify with the key: $(cat "$WORK/verify-key.out")"
ok "verify with the key: clean"

# A manifest's disk records changed (the seal recomputed, as anyone with
# write access to the storage could): only the key's HMAC catches it.
manifest=$WORK/repo/points/$point/manifest.json
cp "$manifest" "$WORK/manifest.orig"
python3 - "$manifest" <<'PY'
import hashlib, sys
path = sys.argv[1]
text = open(path).read()
body, tail = text[: text.rindex('"manifest_sha256":"') + 19], text[text.rindex('"manifest_sha256":"') + 19 + 64:]
# The disks' names swapped: a restore of virtio0 would give virtio1's index.
body = body.replace('"name":"virtio0"', '"name":"virtioX"').replace('"name":"virtio1"', '"name":"virtio0"')
body = body.replace('"name":"virtioX"', '"name":"virtio1"')
digest = hashlib.sha256((body + tail).encode()).hexdigest()
open(path, "w").write(body + digest + tail)
PY
"$FERRY" verify --repo "$WORK/repo" --no-record >/dev/null || fail "the re-sealed manifest does not pass the keyless checks"
rc=0; "$FERRY" verify --repo "$WORK/repo" --key-file "$WORK/repo.key" --no-record >"$WORK/verify-mac.out" || rc=$?
((rc == 4)) && grep -q "index_hmac does not match" "$WORK/verify-mac.out" ||
  fail "a changed disk record passed verify with the key (rc $rc): $(cat "$WORK/verify-mac.out")"
cp "$WORK/manifest.orig" "$manifest"
ok "a changed manifest is caught by its HMAC with the key"

# Media damage in one chunk: caught by the CRC without the key, quarantined.
victim=$(find "$WORK/repo/chunks" -type f | sort | head -1)
python3 -c 'import sys; f = open(sys.argv[1], "r+b"); f.seek(4000); b = f.read(1); f.seek(4000); f.write(bytes([b[0] ^ 0x20]))' "$victim"
rc=0; "$FERRY" verify --repo "$WORK/repo" >"$WORK/verify-bad.out" || rc=$?
((rc == 4)) || fail "verify without the key exited $rc on a damaged chunk: $(cat "$WORK/verify-bad.out")"
grep -q '^DAMAGED' "$WORK/verify-bad.out" && grep -q "checksum mismatch" "$WORK/verify-bad.out" ||
  fail "verify did not report the damage: $(cat "$WORK/verify-bad.out")"
[[ ! -e $victim && -n $(ls "$WORK/repo/quarantine") ]] || fail "the damaged chunk was not quarantined"
ok "a flipped byte in a chunk is caught by verify without the key"

# The recovery copy makes a working key file again; a passphrase change keeps the key.
"$FERRY" key recovery --key-file "$WORK/repo.key" >"$WORK/recovery.txt"
grep -q "fingerprint: $repo_fp" "$WORK/recovery.txt" || fail "recovery copy: $(cat "$WORK/recovery.txt")"
FERRY_PASSPHRASE=restored "$FERRY" key restore --key-file "$WORK/restored.key" --recovery-file - <"$WORK/recovery.txt" >/dev/null
[[ $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fingerprint"])' "$WORK/restored.key") == "$repo_fp" ]] ||
  fail "the restored key file has another key"
echo "new passphrase" >"$WORK/new.pass"
"$FERRY" key passwd --key-file "$WORK/repo.key" --new-passphrase-file "$WORK/new.pass"
expect_error 2 "wrong passphrase for key file" "$FERRY" key recovery --key-file "$WORK/repo.key"
"$FERRY" key recovery --key-file "$WORK/repo.key" --passphrase-file "$WORK/new.pass" | cmp -s - "$WORK/recovery.txt" ||
  fail "the passphrase change changed the key"
# Backups go on with the restored key file (the quarantined chunk is stored again).
second=$(FERRY_PASSPHRASE=restored "$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" --key-file "$WORK/restored.key")
FERRY_PASSPHRASE=restored "$FERRY" restore --repo "$WORK/repo" --point "$second" --disk virtio1 --to "$WORK/r1.raw" \
  --key-file "$WORK/restored.key"
cmp "$WORK/d1.raw" "$WORK/r1.raw" || fail "restore of the second point differs"
ok "recovery copy, key restore and passphrase change"

# Through a repository service (ferry-repository): the chunks arrive encrypted,
# the service never sees the key and checks only their framing and CRC.
if [[ -n ${FERRY_REPOSITORY:-} ]]; then
  make_data_disk "$WORK/d2.raw" raw 8M 2
  python3 -c 'import sys; m = sys.argv[1].encode(); sys.stdout.buffer.write((m * (65536 // len(m) + 1))[:65536])' \
    "$MARKER" | dd of="$WORK/d2.raw" bs=64K seek=20 conv=notrunc status=none
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -days 2 \
    -keyout "$WORK/tls-key.pem" -out "$WORK/cert.pem" 2>/dev/null
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$FERRY_REPOSITORY" grant --tokens "$WORK/tokens" --repository enc >"$WORK/enc.token"
  cat >"$WORK/repository.conf" <<CONF
listen = 127.0.0.1:$PORT
tls-cert = $WORK/cert.pem
tls-key = $WORK/tls-key.pem
repository = enc=$WORK/repo
tokens = $WORK/tokens
CONF
  "$FERRY_REPOSITORY" --config "$WORK/repository.conf" >>"$WORK/service.log" 2>&1 &
  SERVICE_PID=$!
  on_exit "kill -9 $SERVICE_PID 2>/dev/null"
  for ((i = 0; i < 200; i++)); do grep -q "serving 1 repositor" "$WORK/service.log" && break; sleep 0.1; done
  grep -q "serving 1 repositor" "$WORK/service.log" || fail "the repository service did not start: $(cat "$WORK/service.log")"
  R=(--repo "ferry+tls://127.0.0.1:$PORT/enc" --repo-token-file "$WORK/enc.token" --repo-ca "$WORK/cert.pem"
     --repo-server-name localhost)
  K=(--key-file "$WORK/restored.key")
  export FERRY_PASSPHRASE=restored
  "$FERRY" stage "${R[@]}" --point remote1 --vm it-vm --disk d2 >/dev/null
  expect_error 2 "is encrypted: give --key-file" "$FERRY" backup-disk "${R[@]}" --point remote1 --disk d2 --file "$WORK/d2.raw"
  "$FERRY" backup-disk "${R[@]}" --point remote1 --disk d2 --file "$WORK/d2.raw" "${K[@]}" 2>"$WORK/remote.log"
  grep -q "[1-9][0-9]* new chunks" "$WORK/remote.log" || fail "no new chunks through the service: $(cat "$WORK/remote.log")"
  "$FERRY" commit "${R[@]}" --point remote1 >/dev/null
  "$FERRY" restore "${R[@]}" --point remote1 --disk d2 --to "$WORK/r2.raw" "${K[@]}"
  cmp "$WORK/d2.raw" "$WORK/r2.raw" || fail "restore through the service differs"
  expect_error 2 "is encrypted: give --key-file" "$FERRY" restore "${R[@]}" --point remote1 --disk d2 --to "$WORK/x2.raw"
  "$FERRY" verify "${R[@]}" --no-record >"$WORK/verify-remote.out" || fail "verify through the service: $(cat "$WORK/verify-remote.out")"
  grep -q "checked ciphertext integrity only" "$WORK/verify-remote.out" || fail "remote verify: $(cat "$WORK/verify-remote.out")"
  "$FERRY" verify "${R[@]}" --no-record "${K[@]}" | grep -q '^OK' || fail "verify with the key through the service"
  ! grep -r -q -a -F "$MARKER" "$WORK/repo" || fail "the marker is in the repository after the remote backup"
  ! grep -q -F "$(cat "$WORK/enc.token")" "$WORK/service.log" || fail "the token is in the service's log"
  ok "through the repository service: encrypted chunks stored, restore bit-exact, verify with and without the key"
fi
