#!/usr/bin/env bash
# Repository v2 integrity, against a real QEMU VM:
#  - a damaged chunk found by verify is quarantined; the next incremental and
#    full backups store the data again, their points verify clean, and the old
#    point still reports the chunk whose data is gone;
#  - a chunk deleted by hand: the next incremental stores it again (exit 0,
#    clean point), never a point that references a missing chunk;
#  - list shows the good points and one problem per bad entry of points/;
#  - every bit flip in a sample of 300 bytes of a manifest is reported by
#    verify and refused by restore, including virtio0 -> virtio1.
. "$(dirname "$0")/common.sh" "$@"

# chunk_of POINT DISKINDEX CHUNK: the chunk file of chunk CHUNK of a point's disk.
chunk_of() {
  python3 - "$WORK/repo" "$1" "$2" "$3" <<'PY'
import sys
repo, point, disk, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with open(f"{repo}/points/{point}/disk-{disk}.fidx", "rb") as f:
    f.seek(64 + 32 * chunk); h = f.read(32).hex()
print(f"{repo}/chunks/{h[:3]}/{h}")
PY
}
flip_byte() {  # flip_byte FILE OFFSET [MASK]
  python3 - "$1" "$2" "${3:-1}" <<'PY'
import sys
path, off, mask = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "r+b") as f:
    f.seek(off); b = f.read(1); f.seek(off); f.write(bytes([b[0] ^ mask]))
PY
}

make_data_disk "$WORK/d0.qcow2" qcow2 32M
vm_start "$WORK/vm" "virtio0=$WORK/d0.qcow2"
"$FERRY" init --repo "$WORK/repo" --chunk-size 1M
p1=$("$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock")
# With 1 MiB chunks on this 32 MiB disk, chunks 8..11 hold unique random data.
gone=$(chunk_of "$p1" 0 8)    # its data is overwritten below: it never comes back
stays=$(chunk_of "$p1" 0 10)  # its data is still on the disk
[[ -f $gone && -f $stays && $gone != "$stays" ]] || fail "chunk files of p1 not found"
vm_write "$WORK/vm" virtio0 0x77 8M 1M
flip_byte "$gone" 100
flip_byte "$stays" 5000

rc=0; "$FERRY" verify --repo "$WORK/repo" >"$WORK/v1" || rc=$?
[[ $rc -eq 4 ]] || fail "verify exit $rc: $(cat "$WORK/v1")"
[[ ! -e $gone && ! -e $stays && $(ls "$WORK/repo/quarantine" | wc -l) -eq 2 ]] ||
  fail "damaged chunks not quarantined: $(ls "$WORK/repo/quarantine")"
ok "verify reported and quarantined the two damaged chunks"

p2=$("$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" 2>"$WORK/p2.log")
[[ $(field "$p2" virtio0 cbt.mode) == incremental ]] || fail "second backup is not incremental"
[[ $(field "$p2" virtio0 stats.healed_chunks) == 1 ]] ||
  fail "incremental did not read the lost chunk again: $(field "$p2" virtio0 stats.healed_chunks); $(cat "$WORK/p2.log")"
grep -q "missing from the repository" "$WORK/p2.log" || fail "no warning about the lost chunk"
p3=$("$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock" --chain fresh)
[[ $(field "$p3" virtio0 cbt.mode) == full ]] || fail "a new chain's first backup is not full"
for p in "$p2" "$p3"; do
  "$FERRY" verify --repo "$WORK/repo" --point "$p" | grep -q '^OK' || fail "point $p does not verify clean"
done
snapshot_copy "$WORK/d0.qcow2" "$WORK/now.raw" "$WORK/vm" virtio0
for p in "$p2" "$p3"; do
  rm -f "$WORK/r.raw"
  "$FERRY" restore --repo "$WORK/repo" --point "$p" --disk virtio0 --to "$WORK/r.raw"
  cmp -s "$WORK/r.raw" "$WORK/now.raw" || fail "point $p restores wrong data"
done
ok "the incremental and the full after the damage verify clean and restore bit-exact"
rc=0; "$FERRY" verify --repo "$WORK/repo" --point "$p1" >"$WORK/v2" || rc=$?
[[ $rc -eq 4 ]] && grep -q "^BAD point $p1 disk virtio0 chunk 8 " "$WORK/v2" ||
  fail "the old point does not report its lost chunk: $(cat "$WORK/v2")"
! grep -q "chunk 10 " "$WORK/v2" || fail "chunk 10 was stored again but is still reported: $(cat "$WORK/v2")"
expect_error 4 "quarantined" "$FERRY" restore --repo "$WORK/repo" --point "$p1" --disk virtio0 --to "$WORK/old.raw"
[[ ! -e $WORK/old.raw ]] || fail "a refused restore left its target"
ok "the old point still reports the chunk whose data is gone (chunk 10 healed by the new backup)"

# A chunk deleted by hand: the next incremental stores it again.
deleted=$(chunk_of "$p2" 0 0)
rm "$deleted"
p4=$("$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock")
[[ -f $deleted ]] || fail "the deleted chunk was not stored again"
[[ $(field "$p4" virtio0 cbt.mode) == incremental && $(field "$p4" virtio0 stats.healed_chunks) -ge 1 ]] ||
  fail "p4: mode $(field "$p4" virtio0 cbt.mode), healed $(field "$p4" virtio0 stats.healed_chunks)"
"$FERRY" verify --repo "$WORK/repo" --point "$p4" | grep -q '^OK' || fail "p4 does not verify clean"
ok "an incremental after a chunk was deleted stores it again and commits a clean point"

# list: a stray file, an empty manifest, a garbled manifest.
echo stray >"$WORK/repo/points/README"
mkdir "$WORK/repo/points/20261201T000000.000000Z-eeeeee" "$WORK/repo/points/20261201T000001.000000Z-ffffff"
: >"$WORK/repo/points/20261201T000000.000000Z-eeeeee/manifest.json"
echo '{"format": "ferry-restore-point-v2", garbled' >"$WORK/repo/points/20261201T000001.000000Z-ffffff/manifest.json"
"$FERRY" list --repo "$WORK/repo" >"$WORK/list" || fail "list failed: $(cat "$WORK/list")"
[[ $(grep -c "^BAD " "$WORK/list") -eq 3 ]] || fail "list problems: $(cat "$WORK/list")"
for p in "$p1" "$p2" "$p3" "$p4"; do grep -q "^$p " "$WORK/list" || fail "list lost point $p"; done
"$FERRY" list --repo "$WORK/repo" --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert len(d["points"]) == 4, d["points"]
assert sorted(p["entry"] for p in d["problems"]) == ["20261201T000000.000000Z-eeeeee", "20261201T000001.000000Z-ffffff", "README"], d["problems"]
' || fail "list --json"
ok "list shows the 4 good points and 3 problem lines"
rm -rf "$WORK/repo/points/README" "$WORK/repo/points/20261201T00000"*

# Manifest flips: a two-disk point, virtio0 -> virtio1 and a 300-byte sample.
make_data_disk "$WORK/e0.qcow2" qcow2 4M 2
make_data_disk "$WORK/e1.qcow2" qcow2 4M 3
vm_start "$WORK/vm2" "virtio0=$WORK/e0.qcow2" "virtio1=$WORK/e1.qcow2"
p5=$("$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm2/qmp.sock")
manifest=$WORK/repo/points/$p5/manifest.json
cp "$manifest" "$WORK/manifest.good"
at=$(python3 -c 'import sys; print(open(sys.argv[1], "rb").read().index(b"\"virtio0\"") + 7)' "$manifest")
flip_byte "$manifest" "$at" 1
grep -q '"virtio1".*"virtio1"' "$manifest" || fail "the flip did not make virtio0 into virtio1"
expect_error 4 "restore point $p5" "$FERRY" restore --repo "$WORK/repo" --point "$p5" --disk virtio1 --to "$WORK/x.raw"
rc=0; "$FERRY" verify --repo "$WORK/repo" --point "$p5" >/dev/null || rc=$?
[[ $rc -eq 4 ]] || fail "verify did not report the renamed disk (exit $rc)"
cp "$WORK/manifest.good" "$manifest"
size=$(stat -c %s "$manifest")
unnoticed=0
for off in $(python3 -c 'import random, sys; random.seed(10); n = int(sys.argv[1]); print(*sorted(random.sample(range(n), min(300, n))))' "$size"); do
  flip_byte "$manifest" "$off" $((1 << (off % 8)))
  rc=0; "$FERRY" --quiet verify --repo "$WORK/repo" --point "$p5" >/dev/null 2>&1 || rc=$?
  rrc=0; "$FERRY" --quiet restore --repo "$WORK/repo" --point "$p5" --disk virtio0 --to "$WORK/y.raw" 2>/dev/null || rrc=$?
  if ((rc == 0 || rrc == 0)); then unnoticed=$((unnoticed + 1)); echo "flip at byte $off: verify $rc, restore $rrc" >&2; fi
  rm -f "$WORK/y.raw"
  cp "$WORK/manifest.good" "$manifest"
done
((unnoticed == 0)) || fail "$unnoticed of 300 manifest flips went unnoticed"
"$FERRY" verify --repo "$WORK/repo" --point "$p5" | grep -q '^OK' || fail "restored manifest does not verify"
ok "300 of 300 sampled manifest bit flips reported by verify and refused by restore"
