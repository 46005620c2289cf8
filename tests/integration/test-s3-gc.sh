#!/usr/bin/env bash
# Garbage collection and space accounting in a bucket of a real one-node
# Ceph RGW (tests/lib/ceph.sh): two backups of a running VM, the first point
# removed, `ferry gc --window 0` removes exactly the chunks only it
# referenced (what `ferry space` called garbage), the remaining point
# restores bit-exact and verifies; then a GC started while a backup uploads
# waits for the backup's writer lease, and the backup's point verifies.
# docs/object-storage.md, "Garbage collection".
. "$(dirname "$0")/common.sh" "$@"
# shellcheck source=../lib/ceph.sh
. "$TESTS_DIR/lib/ceph.sh"
S3=(python3 "$TESTS_DIR/lib/s3.py")
on_exit 'ceph_cleanup "$rc"'

ceph_start "$WORK/ceph" || fail "the cluster did not start"
"${S3[@]}" mb ferry-gc
export FERRY_S3_ACCESS_KEY=$CEPH_S3_ACCESS_KEY FERRY_S3_SECRET_KEY=$CEPH_S3_SECRET_KEY
REPO="s3://ferry-gc/site-a?endpoint=$CEPH_S3_ENDPOINT&region=$CEPH_S3_REGION"
ok "RGW up in ${CEPH_STARTUP_SECONDS}s at $CEPH_S3_ENDPOINT"

objects() { "${S3[@]}" ls ferry-gc "site-a/$1" | wc -l; }
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
write_random() {  # OFFSET_MIB LENGTH_MIB
  head -c "$(($2 << 20))" /dev/urandom >"$WORK/random.bin"
  vm_qemu_io "$WORK/vm" virtio0 "write -s $WORK/random.bin $(($1 << 20)) $(($2 << 20))" >/dev/null ||
    fail "writing $2 MiB at $1 MiB into the guest"
}

make_data_disk "$WORK/d0.qcow2" qcow2 $((32 * 1024 * 1024))
VM_NAME=gc-vm vm_start "$WORK/vm" "virtio0=$WORK/d0.qcow2"
"$FERRY" init --repo "$REPO" --chunk-size 1M
write_random 0 8
first=$("$FERRY" backup --repo "$REPO" --qmp "$WORK/vm/qmp.sock" --vm gc-vm 2>"$WORK/b1.log") ||
  fail "first backup: $(cat "$WORK/b1.log")"
write_random 0 4  # 4 chunks of the first point are now only its own
second=$("$FERRY" backup --repo "$REPO" --qmp "$WORK/vm/qmp.sock" --vm gc-vm 2>"$WORK/b2.log") ||
  fail "second backup: $(cat "$WORK/b2.log")"
snapshot_copy "$WORK/d0.qcow2" "$WORK/d0-second.raw" "$WORK/vm" virtio0
ok "two backups: $first, $second; $(objects chunks/) chunk objects"

"$FERRY" remove --repo "$REPO" --point "$first" >/dev/null || fail "removing $first"
"$FERRY" space --repo "$REPO" --json >"$WORK/space1.json" || fail "ferry space on the bucket"
garbage=$(json_field garbage_chunks <"$WORK/space1.json")
referenced=$(json_field referenced_chunks <"$WORK/space1.json")
((garbage >= 4)) || fail "space counts $garbage garbage chunks after removing $first (expected at least 4)"
"$FERRY" space --repo "$REPO" >/dev/null || fail "ferry space (table) on the bucket"
ok "space: $referenced chunks referenced, $garbage garbage"

"$FERRY" gc --repo "$REPO" --dry-run --window 0 --json >"$WORK/dry.json" || fail "gc --dry-run"
[[ $(json_field chunks_removed <"$WORK/dry.json") == "$garbage" ]] || fail "the dry run would remove $(json_field chunks_removed <"$WORK/dry.json"), not $garbage"
(($(objects chunks/) == referenced + garbage)) || fail "the dry run removed chunks"
sleep 1.1  # LastModified has whole seconds: the garbage must be older than the GC's start
before=$(objects chunks/)
"$FERRY" gc --repo "$REPO" --window 0 --json >"$WORK/gc1.json" 2>"$WORK/gc1.log" || fail "gc: $(cat "$WORK/gc1.log")"
removed=$(json_field chunks_removed <"$WORK/gc1.json")
[[ $removed == "$garbage" ]] || fail "gc removed $removed chunks, space said $garbage were garbage"
(($(objects chunks/) == before - garbage)) || fail "$(objects chunks/) chunk objects left, expected $((before - garbage))"
(($(objects gc/) == 0)) || fail "the GC record stayed"
"$FERRY" restore --repo "$REPO" --point "$second" --disk virtio0 --to "$WORK/r2.raw"
same_content "$WORK/r2.raw" "$WORK/d0-second.raw"
"$FERRY" verify --repo "$REPO" >"$WORK/verify1.log" 2>&1 || fail "verify after gc: $(cat "$WORK/verify1.log")"
ok "gc removed exactly the $garbage unreferenced chunks; $second restores bit-exact and verifies"

# --- a GC while a backup uploads: it waits for the backup's writer lease.
write_random 8 8
before=$(objects chunks/)
"$FERRY" backup --repo "$REPO" --qmp "$WORK/vm/qmp.sock" --vm gc-vm --rate-limit 2M \
  >"$WORK/third.id" 2>"$WORK/third.log" &
backup_pid=$!
on_exit "kill -9 $backup_pid 2>/dev/null"
deadline=$((SECONDS + 30))
until (($(objects chunks/) > before)); do
  ((SECONDS < deadline)) || fail "the backup stored nothing in 30 s: $(cat "$WORK/third.log")"
  sleep 0.2
done
(($(objects writers/) == 1)) || fail "the running backup holds $(objects writers/) writer leases, not 1"
"$FERRY" gc --repo "$REPO" --window 0 --json >"$WORK/gc2.json" 2>"$WORK/gc2.log" || fail "gc during a backup: $(cat "$WORK/gc2.log")"
wait "$backup_pid" || fail "the backup during a GC failed: $(cat "$WORK/third.log")"
third=$(cat "$WORK/third.id")
[[ $(json_field writers_waited_for <"$WORK/gc2.json") == 1 ]] || fail "the GC did not wait for the backup: $(cat "$WORK/gc2.json")"
(($(objects writers/) == 0)) || fail "a writer lease stayed after the backup"
"$FERRY" verify --repo "$REPO" --point "$third" >"$WORK/verify2.log" 2>&1 || fail "verify of $third: $(cat "$WORK/verify2.log")"
snapshot_copy "$WORK/d0.qcow2" "$WORK/d0-third.raw" "$WORK/vm" virtio0
"$FERRY" restore --repo "$REPO" --point "$third" --disk virtio0 --to "$WORK/r3.raw"
same_content "$WORK/r3.raw" "$WORK/d0-third.raw"
ok "a GC during a backup waited for it; point $third verifies and restores bit-exact"
