#!/usr/bin/env bash
# Bad input gets a clear message and a non-zero exit, and leaves nothing
# half-written: no such socket, not a QMP peer, unknown VM or disk, not a
# repository, repository not writable, repository disk full (ENOSPC),
# restore target exists, malformed options and config.
. "$(dirname "$0")/common.sh" "$@"

make_data_disk "$WORK/d0.qcow2" qcow2 16M
dd if=/dev/urandom of="$WORK/big.raw" bs=1M count=24 status=none
VM_NAME=it-bad vm_start "$WORK/vm" "virtio0=$WORK/d0.qcow2" "big=$WORK/big.raw"
"$FERRY" init --repo "$WORK/repo" --chunk-size 1M
Q=$WORK/vm/qmp.sock

# The QMP side.
expect_error 3 "$WORK/nope.sock" "$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/nope.sock"
python3 -c '
import socket, sys, os
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(4)
if os.fork() == 0:
    while True:
        c, _ = s.accept(); c.sendall(b"hello, I am not QEMU\n"); c.close()
' "$WORK/fake.sock"
on_exit "pkill -f 'I am not QEMU' || true"
expect_error 2 "is not a QMP socket" "$FERRY" backup --repo "$WORK/repo" --qmp "$WORK/fake.sock"
expect_error 3 "named 'it-bad', not 'other'" "$FERRY" backup --repo "$WORK/repo" --qmp "$Q" --vm other
expect_error 3 "has no disk 'sda' (its disks: virtio0, big)" "$FERRY" backup --repo "$WORK/repo" --qmp "$Q" --disk sda

# The repository side.
expect_error 2 "not a Ferry repository" "$FERRY" backup --repo "$WORK" --qmp "$Q"
expect_error 3 "does not exist" "$FERRY" list --repo "$WORK/missing"
expect_error 2 "not empty" "$FERRY" init --repo "$WORK/repo"
expect_error 2 "chunk size 1000" "$FERRY" init --repo "$WORK/r2" --chunk-size 1000
expect_error 2 "from -7 to 19" "$FERRY" init --repo "$WORK/r3" --compression-level 42
expect_error 2 "unknown option --bogus" "$FERRY" list --repo "$WORK/repo" --bogus
expect_error 2 "missing required option --repo" "$FERRY" list
expect_error 2 "'fast' is not a size" "$FERRY" backup --repo "$WORK/repo" --qmp "$Q" --rate-limit fast
[[ -z $(ferry_objects "$WORK/vm") ]] || fail "failed runs left objects in QEMU"

p1=$("$FERRY" backup --repo "$WORK/repo" --qmp "$Q" --disk virtio0)
expect_error 2 "unknown image format 'vmdk'" "$FERRY" restore --repo "$WORK/repo" --point "$p1" --disk virtio0 --to "$WORK/x" --format vmdk
echo keep >"$WORK/exists.raw"
expect_error 2 "already exists" "$FERRY" restore --repo "$WORK/repo" --point "$p1" --disk virtio0 --to "$WORK/exists.raw"
[[ $(cat "$WORK/exists.raw") == keep ]] || fail "existing restore target was modified"
expect_error 3 "has no disk 'big'" "$FERRY" restore --repo "$WORK/repo" --point "$p1" --disk big --to "$WORK/y.raw"
expect_error 3 "does not exist" "$FERRY" restore --repo "$WORK/repo" --point nosuchpoint --disk virtio0 --to "$WORK/y.raw"
[[ ! -e $WORK/y.raw && -z $(compgen -G "$WORK/*.ferry-partial-*") ]] || fail "failed restore left files"

cp "$WORK/repo/ferry-repository.json" "$WORK/config.bak"
echo '{"format": "ferry-repository-v1", "chunk_size": "big"' >"$WORK/repo/ferry-repository.json"
expect_error 4 "ferry-repository.json" "$FERRY" list --repo "$WORK/repo"
# Values are checked on open exactly as init checks them.
sed 's/"zstd_level":1/"zstd_level":99/' "$WORK/config.bak" >"$WORK/repo/ferry-repository.json"
expect_error 4 "zstd level 99 is not in -7..19" "$FERRY" backup --repo "$WORK/repo" --qmp "$Q"
# A newer repository, chunk or index format is reported as such, not as damage.
sed 's/ferry-repository-v2/ferry-repository-v4/' "$WORK/config.bak" >"$WORK/repo/ferry-repository.json"
expect_error 2 "written by a newer Ferry (format ferry-repository-v4" "$FERRY" list --repo "$WORK/repo"
cp "$WORK/config.bak" "$WORK/repo/ferry-repository.json"
chunk=$(find "$WORK/repo/chunks" -type f | head -1)
cp "$chunk" "$WORK/chunk.bak"
printf 'FRYCHK03' | dd of="$chunk" conv=notrunc status=none
rc=0; "$FERRY" verify --repo "$WORK/repo" >"$WORK/verify.out" 2>&1 || rc=$?
[[ $rc -eq 4 ]] && grep -q "newer Ferry (format FRYCHK03; this Ferry reads up to FRYCHK02)" "$WORK/verify.out" ||
  fail "newer chunk format: exit $rc: $(cat "$WORK/verify.out")"
[[ -f $chunk && -z $(ls -A "$WORK/repo/quarantine") ]] || fail "a newer-format chunk was quarantined"
cp "$WORK/chunk.bak" "$chunk"
index=$(ls "$WORK/repo/points/$p1/"*.fidx | head -1)
cp "$index" "$WORK/index.bak"
printf 'FRYFIX07' | dd of="$index" conv=notrunc status=none
expect_error 2 "newer Ferry (format FRYFIX07" "$FERRY" restore --repo "$WORK/repo" --point "$p1" --disk virtio0 --to "$WORK/z.raw"
cp "$WORK/index.bak" "$index"
ok "newer formats are reported as such and left alone"

# Read-only and full file systems need a mount; skip those parts if we cannot.
mkdir -p "$WORK/ro" "$WORK/full"
if ! mount -t tmpfs -o size=4m tmpfs "$WORK/ro" 2>/dev/null; then
  echo "skip: cannot mount tmpfs here; read-only and ENOSPC cases not run"
  exit 0
fi
on_exit "umount -l '$WORK/ro' 2>/dev/null; umount -l '$WORK/full' 2>/dev/null"
"$FERRY" init --repo "$WORK/ro/repo"
mount -o remount,ro "$WORK/ro"
expect_error 5 "is not writable" "$FERRY" backup --repo "$WORK/ro/repo" --qmp "$Q"

# ENOSPC: a repository on a 12 MiB file system; the 24 MiB random disk cannot fit.
mount -t tmpfs -o size=12m tmpfs "$WORK/full"
"$FERRY" init --repo "$WORK/full/repo" --chunk-size 1M
small=$("$FERRY" backup --repo "$WORK/full/repo" --qmp "$Q" --disk virtio0)
expect_error 5 "No space left on device (the file system is full)" "$FERRY" backup --repo "$WORK/full/repo" --qmp "$Q"
[[ $(points "$WORK/full/repo") == "$small" ]] || fail "after ENOSPC the points are: $(points "$WORK/full/repo")"
[[ -z $(ls -A "$WORK/full/repo/staging") ]] || fail "ENOSPC left staging: $(ls "$WORK/full/repo/staging")"
[[ -z $(ferry_objects "$WORK/vm") ]] || fail "ENOSPC left objects in QEMU: $(ferry_objects "$WORK/vm")"
"$FERRY" verify --repo "$WORK/full/repo" | grep -q '^OK' || fail "repository not clean after ENOSPC"
"$FERRY" restore --repo "$WORK/full/repo" --point "$small" --disk virtio0 --to "$WORK/small.raw"
qemu-img compare -U "$WORK/d0.qcow2" "$WORK/small.raw" >/dev/null || fail "earlier point damaged by ENOSPC"
ok "disk full: clear error, earlier point intact, nothing half-written"
