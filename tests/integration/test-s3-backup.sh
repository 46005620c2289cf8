#!/usr/bin/env bash
# A repository in a bucket of a real one-node Ceph RGW (tests/lib/ceph.sh):
# a running VM backed up into it, restored bit-exact, verified, backed up
# incrementally; radosgw killed with SIGKILL in the middle of an upload and
# restarted (the backup rides it out on retries and the point is right);
# the backup process killed with SIGKILL mid-upload (no point appears, the
# next run stores only what is missing); a wrong secret refused clearly.
# docs/object-storage.md.
. "$(dirname "$0")/common.sh" "$@"
# shellcheck source=../lib/ceph.sh
. "$TESTS_DIR/lib/ceph.sh"
S3=(python3 "$TESTS_DIR/lib/s3.py")
on_exit 'ceph_cleanup "$rc"'

ceph_start "$WORK/ceph" || fail "the cluster did not start"
"${S3[@]}" mb ferry-backups
export FERRY_S3_ACCESS_KEY=$CEPH_S3_ACCESS_KEY FERRY_S3_SECRET_KEY=$CEPH_S3_SECRET_KEY
REPO="s3://ferry-backups/site-a?endpoint=$CEPH_S3_ENDPOINT&region=$CEPH_S3_REGION"
ok "RGW up in ${CEPH_STARTUP_SECONDS}s at $CEPH_S3_ENDPOINT"

field() {  # POINT DISK KEY
  "$FERRY" list --repo "$REPO" --json | python3 -c '
import json, sys
pid, disk, key = sys.argv[1:4]
p = [p for p in json.load(sys.stdin)["points"] if p["id"] == pid][0]
d = ([d for d in p["disks"] if d["name"] == disk] or [{}])[0]
for k in key.split("."): d = d.get(k, "") if isinstance(d, dict) else ""
print(d)' "$@"
}
objects() { "${S3[@]}" ls ferry-backups "site-a/$1" | wc -l; }
# write_random OFFSET_MIB LENGTH_MIB: fresh random data into the guest's disk
# (one new chunk per MiB; a pattern would deduplicate to one).
write_random() {
  head -c "$(($2 << 20))" /dev/urandom >"$WORK/random.bin"
  vm_qemu_io "$WORK/vm" virtio0 "write -s $WORK/random.bin $(($1 << 20)) $(($2 << 20))" >/dev/null ||
    fail "writing $2 MiB at $1 MiB into the guest"
}

make_data_disk "$WORK/d0.qcow2" qcow2 $((64 * 1024 * 1024 + 512))
VM_NAME=s3-vm vm_start "$WORK/vm" "virtio0=$WORK/d0.qcow2"

"$FERRY" init --repo "$REPO" --chunk-size 1M
expect_error 2 "objects exist under its prefix" "$FERRY" init --repo "$REPO"
point=$("$FERRY" backup --repo "$REPO" --qmp "$WORK/vm/qmp.sock" --vm s3-vm 2>"$WORK/full.log") ||
  fail "full backup: $(cat "$WORK/full.log")"
[[ $(points "$REPO") == "$point" ]] || fail "list does not show exactly $point"
(($(objects chunks/) > 0)) || fail "no chunk objects in the bucket"
[[ $("${S3[@]}" ls ferry-backups "site-a/points/$point/manifest.json" | wc -l) == 1 ]] || fail "no manifest object"
ok "full backup into the bucket: point $point, $(objects chunks/) chunk objects"

"$FERRY" restore --repo "$REPO" --point "$point" --disk virtio0 --to "$WORK/r0.raw"
snapshot_copy "$WORK/d0.qcow2" "$WORK/d0-full.raw" "$WORK/vm" virtio0
same_content "$WORK/r0.raw" "$WORK/d0-full.raw"
ok "restore from the bucket is bit-exact"

"$FERRY" verify --repo "$REPO" >"$WORK/verify.log" 2>&1 || fail "verify failed: $(cat "$WORK/verify.log")"
grep -q '^OK' "$WORK/verify.log" || fail "verify not clean: $(cat "$WORK/verify.log")"
ok "verify reads every chunk back from the bucket: clean"

# --- incremental: 3 MiB changed in the guest.
write_random 8 3
second=$("$FERRY" backup --repo "$REPO" --qmp "$WORK/vm/qmp.sock" --vm s3-vm 2>"$WORK/incr.log") ||
  fail "incremental backup: $(cat "$WORK/incr.log")"
[[ $(field "$second" virtio0 cbt.mode) == incremental ]] || fail "second backup not incremental: $(cat "$WORK/incr.log")"
new=$(field "$second" virtio0 stats.new_chunks)
((new >= 3 && new <= 5)) || fail "incremental stored $new new chunks for 3 MiB changed"
snapshot_copy "$WORK/d0.qcow2" "$WORK/d0-incr.raw" "$WORK/vm" virtio0
"$FERRY" restore --repo "$REPO" --point "$second" --disk virtio0 --to "$WORK/r1.raw"
same_content "$WORK/r1.raw" "$WORK/d0-incr.raw"
ok "incremental stored $new chunks; its restore is bit-exact"

# --- radosgw killed mid-upload and restarted: retries carry the backup through.
write_random 16 24
before=$(objects chunks/)
"$FERRY" backup --repo "$REPO" --qmp "$WORK/vm/qmp.sock" --vm s3-vm --rate-limit 8M \
  >"$WORK/third.id" 2>"$WORK/third.log" &
backup_pid=$!
on_exit "kill -9 $backup_pid 2>/dev/null"
deadline=$((SECONDS + 60))
until (($(objects chunks/) > before)); do
  ((SECONDS < deadline)) || fail "the backup stored nothing in 60 s: $(cat "$WORK/third.log")"
  sleep 0.2
done
ceph_kill_rgw
sleep 2
ceph_restart_rgw
wait "$backup_pid" || fail "the backup did not survive a radosgw restart: $(cat "$WORK/third.log")"
third=$(cat "$WORK/third.id")
snapshot_copy "$WORK/d0.qcow2" "$WORK/d0-third.raw" "$WORK/vm" virtio0
"$FERRY" restore --repo "$REPO" --point "$third" --disk virtio0 --to "$WORK/r2.raw"
same_content "$WORK/r2.raw" "$WORK/d0-third.raw"
ok "radosgw killed mid-upload and restarted: the backup finished, point $third restores bit-exact"

# --- the backup itself killed mid-upload: no point shows; the next run resumes.
write_random 40 20
listed=$(points "$REPO" | wc -l)
before=$(objects chunks/)
"$FERRY" backup --repo "$REPO" --qmp "$WORK/vm/qmp.sock" --vm s3-vm --rate-limit 4M \
  >/dev/null 2>"$WORK/killed.log" &
backup_pid=$!
deadline=$((SECONDS + 60))
until (($(objects chunks/) >= before + 5)); do
  ((SECONDS < deadline)) || fail "the backup stored too little in 60 s: $(cat "$WORK/killed.log")"
  sleep 0.2
done
kill -9 "$backup_pid"
wait "$backup_pid" 2>/dev/null || true
(($(points "$REPO" | wc -l) == listed)) || fail "a killed backup left a visible point"
stored_before=$(objects chunks/)
fourth=$("$FERRY" backup --repo "$REPO" --qmp "$WORK/vm/qmp.sock" --vm s3-vm 2>"$WORK/fourth.log") ||
  fail "rerun after the kill: $(cat "$WORK/fourth.log")"
new=$(field "$fourth" virtio0 stats.new_chunks)
reused=$(field "$fourth" virtio0 stats.reused_chunks)
((new < 20)) || fail "the rerun stored $new new chunks: what the killed run uploaded was not reused"
snapshot_copy "$WORK/d0.qcow2" "$WORK/d0-fourth.raw" "$WORK/vm" virtio0
"$FERRY" restore --repo "$REPO" --point "$fourth" --disk virtio0 --to "$WORK/r3.raw"
same_content "$WORK/r3.raw" "$WORK/d0-fourth.raw"
ok "a backup killed after $((stored_before - before)) uploads left no point; the rerun stored $new new chunks (reused $reused), restores bit-exact"

"$FERRY" verify --repo "$REPO" >"$WORK/verify2.log" 2>&1 || fail "verify failed: $(cat "$WORK/verify2.log")"
ok "verify of all $(points "$REPO" | wc -l) points clean"

# --- a wrong secret: refused, naming the store's answer, never the secret.
FERRY_S3_SECRET_KEY=not-the-secret expect_error 5 "SignatureDoesNotMatch" "$FERRY" list --repo "$REPO"
FERRY_S3_SECRET_KEY=not-the-secret "$FERRY" list --repo "$REPO" 2>"$WORK/denied.log" || true
grep -q "not-the-secret\|$CEPH_S3_SECRET_KEY" "$WORK/denied.log" && fail "a secret appears in the error"
ok "a wrong secret is refused clearly"
