#!/usr/bin/env bash
# Garbage collection (issue 14, item 2) against real backups: three points of
# a running QEMU VM and garbage from a discarded staged point; then, again and
# again, `ferry prune --keep-last 1` (the oldest point locked for a while, so
# it removes the middle one) and a GC killed -9 at a random moment, while
# another backup and restores run against the same repository; then a last
# GC to the end. Every remaining point verifies and restores bit-exact, the
# pruned point's unique chunks and the garbage are gone, nothing referenced
# is. Once the lock has expired, prune removes the oldest point too and a GC
# frees what only it referenced. The GCs run with --window 0 so
# that chunks written seconds ago count as old; the window's own protection
# is covered by common/gc_test.cc.
. "$(dirname "$0")/common.sh" "$@"

MiB=$((1024 * 1024))
REPO=$WORK/repo
make_data_disk "$WORK/d0.raw" raw $((32 * MiB))
VM_NAME=gc vm_start "$WORK/vm" "virtio0=$WORK/d0.raw"
"$FERRY" init --repo "$REPO" --chunk-size 64K
mkdir -p "$WORK/ref"

# backup [ferry options]: reference copy of the disk (only the test writes
# to it), then a backup. Sets $point.
backup() {
  snapshot_copy "$WORK/d0.raw" "$WORK/ref/next" "$WORK/vm" virtio0
  point=$("$FERRY" --quiet backup --repo "$REPO" --qmp "$WORK/vm/qmp.sock" "$@") || fail "backup failed"
  mv "$WORK/ref/next" "$WORK/ref/$point"
}
check_point() {
  rm -f "$WORK/restored.$2"
  "$FERRY" --quiet restore --repo "$REPO" --point "$1" --disk virtio0 --to "$WORK/restored.$2" ||
    fail "point $1 does not restore"
  cmp -s "$WORK/restored.$2" "$WORK/ref/$1" || fail "point $1 does not restore bit-exact"
}
chunk_path() { echo "$REPO/chunks/${1:0:3}/$1"; }

backup; p1=$point
vm_write "$WORK/vm" virtio0 0x11 4M 2M >/dev/null
backup; p2=$point
vm_write "$WORK/vm" virtio0 0x22 4M 2M >/dev/null
backup; p3=$point
[[ $(field "$p3" virtio0 cbt.mode) == incremental ]] || fail "the third point is not an incremental"
ok "three points: $p1, $p2 (incremental), $p3 (incremental)"

# Garbage: a staged point whose disk was written, then discarded.
head -c $((8 * MiB)) /dev/urandom >"$WORK/junk.raw"
junk=$("$FERRY" stage --repo "$REPO" --vm junk --disk a --expires 1h)
"$FERRY" --quiet backup-disk --repo "$REPO" --point "$junk" --disk a --file "$WORK/junk.raw"
digests "$REPO/staging/$junk/disk-0.fidx" >"$WORK/junk.digests"
"$FERRY" discard --repo "$REPO" --point "$junk"

# What removing p2 frees: its chunks that neither p1 nor p3 references.
digests "$REPO/points/$p2"/*.fidx >"$WORK/p2.digests"
digests "$REPO/points/$p1"/*.fidx "$REPO/points/$p3"/*.fidx >"$WORK/kept.digests"
comm -23 "$WORK/p2.digests" "$WORK/kept.digests" >"$WORK/p2-unique.digests"
[[ -s $WORK/p2-unique.digests ]] || fail "point $p2 has no chunk of its own"
frees=$("$FERRY" space --repo "$REPO" --json | python3 -c '
import json, sys
r = json.load(sys.stdin)
print([p for p in r["points"] if p["id"] == sys.argv[1]][0]["unique_chunks"])' "$p2")
[[ $frees == $(wc -l <"$WORK/p2-unique.digests") ]] ||
  fail "ferry space says removing $p2 frees $frees chunks; its unique chunks are $(wc -l <"$WORK/p2-unique.digests")"
ok "ferry space: removing $p2 frees its $frees unique chunk(s)"

dry=$("$FERRY" --quiet gc --repo "$REPO" --window 0 --dry-run --json)
[[ $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["chunks_removed"])' "$dry") == $(wc -l <"$WORK/junk.digests") ]] ||
  fail "the dry run would remove other than the discarded point's chunks: $dry"
while read -r d; do [[ -f $(chunk_path "$d") ]] || fail "the dry run removed $d"; done <"$WORK/junk.digests"
ok "gc --dry-run counts the garbage and removes nothing"

# p1 is restored all along; a lock keeps prune off it for the loop (and is
# itself a case: a locked point survives prune and GC).
"$FERRY" --quiet lock --repo "$REPO" --point "$p1" --for 30s >/dev/null || fail "lock failed"
lock_set=$SECONDS

# Another backup (a new chain: a full read, slowed) and restores run while
# GCs are killed at random moments.
vm_write "$WORK/vm" virtio0 0x33 12M 1M >/dev/null
snapshot_copy "$WORK/d0.raw" "$WORK/ref/p4" "$WORK/vm" virtio0
"$FERRY" --quiet backup --repo "$REPO" --qmp "$WORK/vm/qmp.sock" --chain other --rate-limit 4M \
  >"$WORK/p4.id" 2>"$WORK/p4.log" &
backup_pid=$!
(
  while kill -0 $backup_pid 2>/dev/null; do
    check_point "$p1" a
    check_point "$p3" b
  done
) &
restores_pid=$!
killed=0 rounds=0
# At least 20 rounds, and until the backup is done.
while ((rounds < 20)) || kill -0 $backup_pid 2>/dev/null; do
  ((++rounds))
  "$FERRY" --quiet prune --repo "$REPO" --keep-last 1 >>"$WORK/prune.log" 2>&1 || fail "prune failed: $(tail -5 "$WORK/prune.log")"
  "$FERRY" --quiet gc --repo "$REPO" --window 0 >/dev/null 2>"$WORK/gc.log" &
  gc=$!
  sleep "0.0$((RANDOM % 10))$((RANDOM % 10))"
  if kill -9 $gc 2>/dev/null; then ((++killed)); fi
  rc=0; wait $gc 2>/dev/null || rc=$?
  # Killed (137), finished (0), or refused because the previous one still
  # held the lock for a moment (6): anything else is a failure.
  [[ $rc == 0 || $rc == 137 || $rc == 6 ]] || fail "gc exited $rc: $(cat "$WORK/gc.log")"
done
wait $backup_pid || fail "the backup that ran during the GCs failed: $(cat "$WORK/p4.log")"
wait $restores_pid || fail "a restore during the GCs failed"
p4=$(cat "$WORK/p4.id")
mv "$WORK/ref/p4" "$WORK/ref/$p4"
((killed > 0)) || fail "no GC was killed"
[[ ! -d $REPO/points/$p2 && -d $REPO/points/$p1 && -d $REPO/points/$p3 ]] || fail "prune removed other than $p2: $(ls "$REPO/points")"
ok "$rounds rounds of prune and GC ($killed GCs killed -9) while a backup and restores ran; prune removed $p2, kept locked $p1; the backup and every restore succeeded"

out=$("$FERRY" --quiet gc --repo "$REPO" --window 0 --json)
[[ ! -e $REPO/gc/state.json ]] || fail "the last GC left its state"
[[ -z $(find "$REPO/chunks" -name '.gc-*') ]] || fail "doomed chunk names left: $(find "$REPO/chunks" -name '.gc-*')"
"$FERRY" verify --repo "$REPO" | grep -q '^OK' || fail "verify is not clean: $("$FERRY" verify --repo "$REPO")"
for p in "$p1" "$p3" "$p4"; do check_point "$p" final; done
while read -r d; do [[ ! -e $(chunk_path "$d") ]] || fail "chunk $d of the removed point is still there"; done <"$WORK/p2-unique.digests"
while read -r d; do [[ ! -e $(chunk_path "$d") ]] || fail "garbage chunk $d is still there"; done <"$WORK/junk.digests"
digests "$REPO"/points/*/*.fidx | while read -r d; do
  [[ -f $(chunk_path "$d") ]] || fail "referenced chunk $d was removed"
done
space=$("$FERRY" space --repo "$REPO" --json)
python3 -c '
import json, sys
r = json.loads(sys.argv[1])
assert r["garbage_chunks"] == 0 and r["missing_chunks"] == 0, r' "$space" || fail "space after GC: $space"
ok "every point verifies and restores bit-exact; the removed point's unique chunks and the garbage are gone: $out"

# Once p1's lock has expired prune removes it too; GC frees what only it
# referenced, and what prune kept restores.
digests "$REPO/points/$p1"/*.fidx >"$WORK/p1.digests"
"$FERRY" --quiet prune --repo "$REPO" --keep-last 1 >/dev/null || fail "prune failed"
[[ -d $REPO/points/$p1 ]] || fail "prune removed $p1 while it was locked"
while ((SECONDS - lock_set < 31)); do sleep 1; done
"$FERRY" --quiet prune --repo "$REPO" --keep-last 1 >/dev/null || fail "prune failed"
[[ ! -d $REPO/points/$p1 && -d $REPO/points/$p3 && -d $REPO/points/$p4 ]] || fail "prune kept: $(points "$REPO")"
digests "$REPO"/points/*/*.fidx >"$WORK/kept.digests"
comm -23 "$WORK/p1.digests" "$WORK/kept.digests" >"$WORK/p1-unique.digests"
"$FERRY" --quiet gc --repo "$REPO" --window 0 >/dev/null
while read -r d; do [[ ! -e $(chunk_path "$d") ]] || fail "chunk $d of pruned $p1 is still there"; done <"$WORK/p1-unique.digests"
"$FERRY" verify --repo "$REPO" | grep -q '^OK' || fail "verify is not clean after prune and GC"
for p in "$p3" "$p4"; do check_point "$p" pruned; done
ok "after its lock expired, ferry prune --keep-last 1 then gc: $(wc -l <"$WORK/p1-unique.digests") chunk(s) of the pruned point freed; the kept points verify and restore"
