#!/usr/bin/env bash
# An encrypted repository in a bucket of a real one-node Ceph RGW
# (tests/lib/ceph.sh; docs/encryption.md, docs/object-storage.md): two running
# VMs whose disks hold the same data, one known plaintext marker among it;
# each backed up through QMP. The marker is in no object of the bucket (a
# plain control repository in the same bucket shows the search would find it);
# the second VM's backup stores no new chunk (the same keyed digests); restore
# with the key is bit-exact, without a key, with another repository's key or
# with a wrong passphrase refused naming the problem; verify without the key
# checks the ciphertext and says so, with the key checks everything.
. "$(dirname "$0")/common.sh" "$@"
# shellcheck source=../lib/ceph.sh
. "$TESTS_DIR/lib/ceph.sh"
S3=(python3 "$TESTS_DIR/lib/s3.py")
on_exit 'ceph_cleanup "$rc"'

export FERRY_PASSPHRASE="an s3 test passphrase"
MARKER="FERRY-S3-ENCRYPTION-MARKER-k4Wq9"
HEX=$(printf '%s' "$MARKER" | od -An -tx1 | tr -d ' \n')

ceph_start "$WORK/ceph" || fail "the cluster did not start"
"${S3[@]}" mb ferry-enc
export FERRY_S3_ACCESS_KEY=$CEPH_S3_ACCESS_KEY FERRY_S3_SECRET_KEY=$CEPH_S3_SECRET_KEY
Q="endpoint=$CEPH_S3_ENDPOINT&region=$CEPH_S3_REGION"
REPO="s3://ferry-enc/enc?$Q"
PLAIN="s3://ferry-enc/plain?$Q"
ok "RGW up in ${CEPH_STARTUP_SECONDS}s at $CEPH_S3_ENDPOINT"

field() {  # REPO POINT DISK KEY
  "$FERRY" list --repo "$1" --json | python3 -c '
import json, sys
pid, disk, key = sys.argv[1:4]
p = [p for p in json.load(sys.stdin)["points"] if p["id"] == pid][0]
d = ([d for d in p["disks"] if d["name"] == disk] or [{}])[0]
for k in key.split("."): d = d.get(k, "") if isinstance(d, dict) else ""
print(d)' "${@:2}"
}
objects() { "${S3[@]}" ls ferry-enc "$1" | wc -l; }

# 24 MiB of data; 64 KiB of the marker, repeated, at 5 MiB.
make_data_disk "$WORK/a.raw" raw 24M
python3 -c 'import sys; m = sys.argv[1].encode(); sys.stdout.buffer.write((m * (65536 // len(m) + 1))[:65536])' \
  "$MARKER" | dd of="$WORK/a.raw" bs=64K seek=80 conv=notrunc status=none
cp "$WORK/a.raw" "$WORK/b.raw"
grep -q -a -F "$MARKER" "$WORK/a.raw" || fail "the marker is not in the disk"

# The control: a plain repository (no compression) in the same bucket holds
# the marker, and s3.py grep finds it, so the check below could fail.
"$FERRY" init --repo "$PLAIN" --compression-level 0
"$FERRY" stage --repo "$PLAIN" --point p1 --vm control --disk d0 >/dev/null
"$FERRY" backup-disk --repo "$PLAIN" --point p1 --disk d0 --file "$WORK/a.raw" 2>/dev/null
rc=0; "${S3[@]}" grep ferry-enc plain/ "$HEX" 2>"$WORK/grep-plain.log" || rc=$?
((rc == 1)) || fail "control: s3.py grep did not find the marker in the plain repository (rc $rc): $(cat "$WORK/grep-plain.log")"
ok "control: $(tail -1 "$WORK/grep-plain.log" | sed 's/^s3.py grep: //') (plain repository)"

VM_NAME=vm-a vm_start "$WORK/vm-a" "virtio0=$WORK/a.raw"
VM_NAME=vm-b vm_start "$WORK/vm-b" "virtio0=$WORK/b.raw"

# Level 0 again: only the encryption hides the marker.
"$FERRY" init --repo "$REPO" --encrypt --key-file "$WORK/repo.key" --compression-level 0 --chunk-size 1M \
  2>"$WORK/init.log" || fail "init: $(cat "$WORK/init.log")"
"${S3[@]}" get ferry-enc enc/ferry-repository.json "$WORK/config.json"
grep -q '"format":"ferry-repository-v3"' "$WORK/config.json" || fail "not a v3 repository: $(cat "$WORK/config.json")"
repo_fp=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["encryption"]["key_fingerprint"])' "$WORK/config.json")
[[ $repo_fp == "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fingerprint"])' "$WORK/repo.key")" ]] ||
  fail "the bucket's configuration names another key than $WORK/repo.key"
ok "encrypted repository in the bucket (key $repo_fp)"

expect_error 2 "is encrypted: give --key-file" "$FERRY" backup --repo "$REPO" --qmp "$WORK/vm-a/qmp.sock" --vm vm-a
pa=$("$FERRY" backup --repo "$REPO" --qmp "$WORK/vm-a/qmp.sock" --vm vm-a --key-file "$WORK/repo.key" 2>"$WORK/a.log") ||
  fail "backup of vm-a: $(cat "$WORK/a.log")"
new_a=$(field "$REPO" "$pa" virtio0 stats.new_chunks)
stored_a=$(field "$REPO" "$pa" virtio0 stats.stored_bytes)
chunks_a=$(objects enc/chunks/)
((new_a >= 8 && chunks_a == new_a)) || fail "vm-a stored $new_a new chunks, $chunks_a chunk objects"
ok "vm-a: point $pa, $new_a new chunks ($stored_a bytes), $chunks_a chunk objects"

# The same data in another VM: the same keyed digests, nothing new stored.
pb=$("$FERRY" backup --repo "$REPO" --qmp "$WORK/vm-b/qmp.sock" --vm vm-b --key-file "$WORK/repo.key" 2>"$WORK/b.log") ||
  fail "backup of vm-b: $(cat "$WORK/b.log")"
new_b=$(field "$REPO" "$pb" virtio0 stats.new_chunks)
stored_b=$(field "$REPO" "$pb" virtio0 stats.stored_bytes)
reused_b=$(field "$REPO" "$pb" virtio0 stats.reused_chunks)
chunks_b=$(objects enc/chunks/)
((new_b == 0 && stored_b == 0 && chunks_b == chunks_a && reused_b >= new_a)) ||
  fail "vm-b (same data) stored $new_b new chunks ($stored_b bytes), reused $reused_b; chunk objects $chunks_a -> $chunks_b"
ok "vm-b (same data): 0 new chunks, 0 bytes stored, $reused_b reused; still $chunks_b chunk objects"

rc=0; "${S3[@]}" grep ferry-enc enc/ "$HEX" 2>"$WORK/grep.log" || rc=$?
((rc == 0)) || fail "the marker is in the bucket (rc $rc): $(cat "$WORK/grep.log")"
rc=0; "${S3[@]}" grep ferry-enc enc/ "$(printf '%s' "${MARKER:0:12}" | od -An -tx1 | tr -d ' \n')" 2>"$WORK/grep12.log" || rc=$?
((rc == 0)) || fail "part of the marker is in the bucket: $(cat "$WORK/grep12.log")"
ok "the plaintext marker is in no object of the repository: $(tail -1 "$WORK/grep.log" | sed 's/^s3.py grep: //')"

"$FERRY" restore --repo "$REPO" --point "$pa" --disk virtio0 --to "$WORK/ra.raw" --key-file "$WORK/repo.key"
cmp "$WORK/a.raw" "$WORK/ra.raw" || fail "restore of vm-a with the key differs"
"$FERRY" restore --repo "$REPO" --point "$pb" --disk virtio0 --to "$WORK/rb.raw" --key-file "$WORK/repo.key"
cmp "$WORK/b.raw" "$WORK/rb.raw" || fail "restore of vm-b with the key differs"
ok "restores with the key are bit-exact (both VMs)"

expect_error 2 "is encrypted: give --key-file" \
  "$FERRY" restore --repo "$REPO" --point "$pa" --disk virtio0 --to "$WORK/x.raw"
FERRY_PASSPHRASE=other "$FERRY" key create --key-file "$WORK/other.key" >/dev/null 2>&1
other_fp=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fingerprint"])' "$WORK/other.key")
expect_error 2 "(fingerprint $other_fp) is not the key of repository s3://ferry-enc/enc" \
  env FERRY_PASSPHRASE=other "$FERRY" restore --repo "$REPO" --point "$pa" --disk virtio0 --to "$WORK/x.raw" \
  --key-file "$WORK/other.key"
expect_error 2 "wrong passphrase for key file $WORK/repo.key" \
  env FERRY_PASSPHRASE=wrong "$FERRY" restore --repo "$REPO" --point "$pa" --disk virtio0 --to "$WORK/x.raw" \
  --key-file "$WORK/repo.key"
[[ ! -e $WORK/x.raw ]] || fail "a refused restore left $WORK/x.raw"
ok "restore without the key, with another key, with a wrong passphrase: refused, naming the problem"

"$FERRY" verify --repo "$REPO" >"$WORK/verify.out" 2>&1 || fail "verify without the key failed: $(cat "$WORK/verify.out")"
grep -q "encrypted repository, no key given: checked ciphertext integrity only" "$WORK/verify.out" ||
  fail "verify without the key did not say what it checked: $(cat "$WORK/verify.out")"
grep -q '^OK' "$WORK/verify.out" || fail "verify without the key not clean: $(cat "$WORK/verify.out")"
"$FERRY" verify --repo "$REPO" --key-file "$WORK/repo.key" >"$WORK/verify-key.out" 2>&1 ||
  fail "verify with the key failed: $(cat "$WORK/verify-key.out")"
grep -q '^OK' "$WORK/verify-key.out" && ! grep -q "ciphertext" "$WORK/verify-key.out" ||
  fail "verify with the key: $(cat "$WORK/verify-key.out")"
ok "verify without the key: clean, ciphertext only; with the key: clean"
