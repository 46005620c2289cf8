# shellcheck shell=bash
# Prelude for Ferry's integration tests (sourced). Usage in a test:
#   . "$(dirname "$0")/common.sh" "$@"      # $1: path to the ferry binary
# Gives: $FERRY, $WORK (a temp dir removed on exit), the VM helpers of
# tests/lib/vm.sh (every VM stopped on exit), and the check helpers below.
# Each test gets its own FERRY_RUNTIME_DIR / FERRY_SCRATCH_DIR so tests can
# run in parallel and leftovers are visible.
set -euo pipefail

FERRY=${1:?usage: test.sh PATH-TO-FERRY}
FERRY=$(realpath "$FERRY")
TESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../lib/vm.sh
. "$TESTS_DIR/lib/vm.sh"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-it-XXXXXX")
export FERRY_RUNTIME_DIR=$WORK/run FERRY_SCRATCH_DIR=$WORK/scratch
_FERRY_CLEANUPS=()
on_exit() { _FERRY_CLEANUPS+=("$1"); }
_ferry_exit() {
  local rc=$?
  set +e
  for ((i = ${#_FERRY_CLEANUPS[@]} - 1; i >= 0; i--)); do eval "${_FERRY_CLEANUPS[i]}"; done
  vm_cleanup_all
  # Guardians of killed backups are ours too.
  pkill -f "_guardian .*--runtime-dir $FERRY_RUNTIME_DIR" 2>/dev/null
  # A test that failed before a point's lock expired leaves files with the
  # file system's immutable flag (docs/retention.md): cleared first.
  rm -rf "$WORK" 2>/dev/null || { chattr -R -i "$WORK" 2>/dev/null; rm -rf "$WORK"; }
  if ((rc == 0)); then echo "PASS: $(basename "$0")"; else echo "FAIL: $(basename "$0") (exit $rc)"; fi
  exit $rc
}
trap _ferry_exit EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok [${SECONDS}s]: $*"; }

# expect_error EXIT_CODE "message substring" command...: the command must
# fail with that exit code and say that on stderr.
expect_error() {
  local want_rc=$1 want_msg=$2; shift 2
  local rc=0 err
  err=$("$@" 2>&1 >/dev/null) || rc=$?
  [[ $rc -eq $want_rc ]] || fail "'$*' exited $rc, expected $want_rc; stderr: $err"
  [[ $err == *"$want_msg"* ]] || fail "'$*' said '$err', expected it to mention '$want_msg'"
  ok "$* -> exit $rc: ${err##*error: }"
}

# field POINT DISK KEY: a disk's member in the manifest of POINT in
# $WORK/repo (cbt.mode, stats.read_bytes, ...); empty if the disk is absent.
field() {
  "$FERRY" list --repo "$WORK/repo" --json | python3 -c '
import json, sys
pid, disk, key = sys.argv[1:4]
p = [p for p in json.load(sys.stdin)["points"] if p["id"] == pid][0]
d = ([d for d in p["disks"] if d["name"] == disk] or [{}])[0]
for k in key.split("."): d = d.get(k, "") if isinstance(d, dict) else ""
print(d)' "$@"
}

# Points in a repository, one id per line.
# digests FIDX...: the distinct non-zero chunk digests these fixed indexes
# reference (docs/repository-format.md: a 64-byte header, then 32 bytes per chunk).
digests() {
  python3 - "$@" <<'PY'
import sys
seen = set()
for path in sys.argv[1:]:
    data = open(path, "rb").read()
    for off in range(64, len(data), 32):
        d = data[off:off + 32]
        if any(d): seen.add(d.hex())
for d in sorted(seen): print(d)
PY
}
points() { "$FERRY" list --repo "$1" --json | python3 -c 'import json,sys; [print(p["id"]) for p in json.load(sys.stdin)["points"]]'; }

# Names of Ferry's objects (exports, jobs, nodes) inside a VM's QEMU.
ferry_objects() {
  local dir=$1
  {
    vm_qmp "$dir" query-block-exports
    vm_qmp "$dir" query-block-jobs
    vm_qmp "$dir" query-named-block-nodes '{"flat": true}'
  } | python3 -c '
import json, sys
names = set()
for line in sys.stdin:
    for o in json.loads(line):
        for k in ("id", "device", "node-name"):
            v = o.get(k) or ""
            if v.startswith("ferry-"): names.add(v)
print(" ".join(sorted(names)))'
}

# Waits (up to $2 s, default 30) until the VM has Ferry objects exported.
wait_for_export() {
  local dir=$1 deadline=$((SECONDS + ${2:-30}))
  until vm_qmp "$dir" query-block-exports | grep -q '"ferry-'; do
    ((SECONDS < deadline)) || fail "no Ferry export appeared in $dir"
    sleep 0.1
  done
}

# snapshot_copy IMAGE OUT [VMDIR DEVICE]: copies a disk image as it is now,
# as raw. With a running VM, name it and the device: qemu-img reads the file,
# so QEMU's cached qcow2 metadata is flushed first.
snapshot_copy() {
  if [[ -n ${3:-} ]]; then vm_hmp "$3" "qemu-io -d $(vm_qdev_path "$4") flush" >/dev/null; fi
  qemu-img convert -U -O raw "$1" "$2"
}

# Compares an image with a raw reference copy.
same_content() { qemu-img compare -U -F raw "$1" "$2" >/dev/null || fail "$1 differs from $2"; }
