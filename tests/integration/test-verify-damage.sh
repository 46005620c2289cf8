#!/usr/bin/env bash
# A flipped byte in a stored chunk is reported by verify, naming the point,
# the disk and the chunk; a damaged index and a missing chunk too.
. "$(dirname "$0")/common.sh" "$@"

make_data_disk "$WORK/d0.qcow2" qcow2 32M
vm_start "$WORK/vm" "virtio0=$WORK/d0.qcow2"
"$FERRY" init --repo "$WORK/repo" --chunk-size 1M
p1=$("$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock")
p2=$("$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/vm/qmp.sock")
"$FERRY" verify --repo "$WORK/repo" | grep -q '^OK' || fail "fresh repository does not verify"

# Flip one byte in the middle of the largest chunk file.
chunk=$(find "$WORK/repo/chunks" -type f -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f2)
size=$(stat -c %s "$chunk")
python3 - "$chunk" $((size / 2)) <<'PY'
import sys
path, off = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(off); b = f.read(1); f.seek(off); f.write(bytes([b[0] ^ 0x01]))
PY
rc=0
"$FERRY" verify --repo "$WORK/repo" >"$WORK/report" 2>&1 || rc=$?
[[ $rc -eq 4 ]] || fail "verify exit $rc, expected 4: $(cat "$WORK/report")"
grep -q "^BAD point $p1 disk virtio0 chunk [0-9]* (offset [0-9]*): chunk $chunk: checksum mismatch" "$WORK/report" ||
  fail "report does not name point $p1: $(cat "$WORK/report")"
grep -q "^BAD point $p2 disk virtio0 chunk" "$WORK/report" || fail "report does not name point $p2"
grep -q "^DAMAGED" "$WORK/report" || fail "no summary line"
ok "flipped byte reported: $(grep -m1 BAD "$WORK/report")"
[[ ! -e $chunk ]] && ls "$WORK/repo/quarantine/" | grep -q "^$(basename "$chunk")\." ||
  fail "the damaged chunk was not moved into quarantine/"
rc=0; "$FERRY" verify --repo "$WORK/repo" --point "$p1" >"$WORK/report1b" || rc=$?
[[ $rc -eq 4 ]] && grep -q "is missing (found damaged earlier, quarantined as" "$WORK/report1b" ||
  fail "a quarantined chunk is not reported as such: $(cat "$WORK/report1b")"
ok "the damaged chunk is quarantined and still reported against its points"

# verify --point checks just that point.
rc=0; "$FERRY" verify --repo "$WORK/repo" --point "$p2" >"$WORK/report2" || rc=$?
[[ $rc -eq 4 ]] && ! grep -q "$p1" "$WORK/report2" || fail "--point report: $(cat "$WORK/report2")"

# A damaged index is reported against its point and disk.
echo garbage >>"$WORK/repo/points/$p1/disk-0.fidx"
rc=0; "$FERRY" verify --repo "$WORK/repo" >"$WORK/report3" || rc=$?
grep -q "^BAD point $p1 disk virtio0: index .*" "$WORK/report3" || fail "damaged index not reported: $(cat "$WORK/report3")"
ok "damaged index reported"

# A missing chunk (another one).
other=$(find "$WORK/repo/chunks" -type f | head -1)
rm "$other"
rc=0; "$FERRY" verify --repo "$WORK/repo" --point "$p2" >"$WORK/report4" || rc=$?
[[ $rc -eq 4 ]] && grep -q "is missing" "$WORK/report4" || fail "missing chunk not reported: $(cat "$WORK/report4")"
ok "missing chunk reported"
expect_error 3 "does not exist" "$FERRY" verify --repo "$WORK/repo" --point 20990101T000000Z-abcdef
