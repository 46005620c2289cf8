#!/usr/bin/env bash
# Object storage benchmark (issue 16), side by side in one run against the
# test Ceph (tests/lib/ceph.sh: one mon, mgr, bluestore OSD, radosgw on
# 127.0.0.1):
#   - ferry backup of a running QEMU VM with the reference disk
#     (bench/make-reference-disk.sh) into a repository in a bucket: wall
#     clock, MiB/s of stored (encoded) bytes, requests per GiB
#   - the plain parallel S3 client (tests/lib/s3.py bench-put, 8 threads)
#     uploading the same number of bytes in objects of the same (average)
#     size: what this radosgw accepts, none of Ferry's code
#   - ferry restore of that point to a raw file, against the plain client's
#     GET of its own objects (plain/) and of Ferry's chunk objects
#     (ferry/chunks/): the same bytes, but keys spread over the bucket's index
#     by digest and written before the plain PUTs, which this radosgw serves
#     markedly slower (2026-12-02: 101 against 160 MiB/s). The restore also
#     writes the disk (O_DIRECT), which neither GET does.
# The ratios are Ferry's MiB/s of stored bytes over the plain client's.
# Each phase also reports the CPU seconds spent by the gateway (the Ceph
# daemons: radosgw, OSD, mon, mgr) and by the client (Ferry and its QEMU, or
# the plain client): on a 2-vCPU machine both share the same two cores, so a
# client that hashes and compresses 2 GiB leaves the gateway less CPU than one
# that only sends bytes. BENCH_PIN=1 gives the gateway CPU 0 and the clients
# CPU 1 (taskset), so each run has the same gateway and the ratio says whether
# the client keeps it busy.
# Usage: bench/s3-backup.sh [WORKDIR]   (default /var/tmp/ferry-bench-s3)
# Env: BENCH_CHUNK_SIZE (default 1M), BENCH_PIN (0), FERRY (binary). Needs a built tree.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ferry=${FERRY:-${FERRY_BUILD_DIR:-$root/build}/bin/ferry}
work=${1:-/var/tmp/ferry-bench-s3}
chunk_size=${BENCH_CHUNK_SIZE:-1M}
mkdir -p "$work"
export FERRY_RUNTIME_DIR=$work/run FERRY_SCRATCH_DIR=$work/scratch
# shellcheck source=../tests/lib/vm.sh
. "$root/tests/lib/vm.sh"
# shellcheck source=../tests/lib/ceph.sh
. "$root/tests/lib/ceph.sh"
s3=(python3 "$root/tests/lib/s3.py")
_exit() {
  local rc=$?
  set +e
  vm_cleanup_all
  ceph_cleanup "$rc"
  rm -rf "$work/ceph" "$work/restored.raw"
  exit $rc
}
trap _exit EXIT

"$root/bench/make-reference-disk.sh" "$work/ref.qcow2" >&2
rm -rf "$work/ceph"
CEPH_VERBOSE=0 ceph_start "$work/ceph" >&2
"${s3[@]}" mb bench
if [[ ${BENCH_PIN:-0} == 1 ]]; then
  for pid in $(ceph_pids); do taskset -apc 0 "$pid" >/dev/null; done
  taskset -pc 1 $$ >/dev/null  # this shell's children: ferry, QEMU, the plain client
fi
# CPU seconds (user + system, all threads) of the given pids so far.
cpu_of() {
  local t=0 pid
  for pid in "$@"; do
    [[ -r /proc/$pid/stat ]] && t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  awk "BEGIN{printf \"%.2f\", $t / $(getconf CLK_TCK)}"
}
gateway_cpu() { cpu_of $(ceph_pids); }
# Runs "$@" and sets phase_client_cpu (its CPU seconds, children included).
timed_cpu() {
  local f=$work/time.out
  /usr/bin/time -o "$f" -f "%U %S" "$@"
  phase_client_cpu=$(awk '{printf "%.2f", $1 + $2}' "$f")
}
export FERRY_S3_ACCESS_KEY=$CEPH_S3_ACCESS_KEY FERRY_S3_SECRET_KEY=$CEPH_S3_SECRET_KEY
repo="s3://bench/ferry?endpoint=$CEPH_S3_ENDPOINT&region=$CEPH_S3_REGION"
"$ferry" --quiet init --repo "$repo" --chunk-size "$chunk_size"

VM_NAME=bench vm_start "$work/vm" "virtio0=$work/ref.qcow2"
cat "$work/ref.qcow2" >/dev/null  # warm the page cache: the store, not the disk, is measured
qemu_pid=$(<"$work/vm/qemu.pid")
qemu0=$(cpu_of "$qemu_pid") gw0=$(gateway_cpu)
start=$(date +%s.%N)
timed_cpu "$ferry" --verbose backup --repo "$repo" --qmp "$work/vm/qmp.sock" >"$work/point" 2>"$work/backup.log"
end=$(date +%s.%N)
point=$(<"$work/point")
backup_s=$(awk "BEGIN{print $end - $start}")
backup_gw=$(awk "BEGIN{printf \"%.2f\", $(gateway_cpu) - $gw0}")
backup_client=$(awk "BEGIN{printf \"%.2f\", $phase_client_cpu + $(cpu_of "$qemu_pid") - $qemu0}")
vm_cleanup_all
requests=$(grep -o 'object storage s3://[^:]*: [0-9]* PUT, [0-9]* GET, [0-9]* LIST, [0-9]* HEAD, [0-9]* DELETE' "$work/backup.log" | tail -1)
read -r puts gets lists heads deletes <<<"$(sed -E 's/.*: ([0-9]+) PUT, ([0-9]+) GET, ([0-9]+) LIST, ([0-9]+) HEAD, ([0-9]+) DELETE/\1 \2 \3 \4 \5/' <<<"$requests")"
"${s3[@]}" ls bench ferry/chunks/ >"$work/chunks.txt"
objects=$(wc -l <"$work/chunks.txt")
stored=$(awk '{s += $2} END {print s}' "$work/chunks.txt")
object_size=$((stored / objects))
echo "ferry backup: $backup_s s, $objects chunk objects, $stored bytes, $requests" >&2

gw0=$(gateway_cpu)
timed_cpu "${s3[@]}" bench-put bench -t 8 -n "$objects" -s "$object_size" --prefix plain/ >"$work/plain-put.json"
plain_put=$(<"$work/plain-put.json")
put_gw=$(awk "BEGIN{printf \"%.2f\", $(gateway_cpu) - $gw0}") put_client=$phase_client_cpu
echo "plain put: $plain_put" >&2

sync
gw0=$(gateway_cpu)
start=$(date +%s.%N)
timed_cpu "$ferry" --quiet restore --repo "$repo" --point "$point" --disk virtio0 --to "$work/restored.raw"
end=$(date +%s.%N)
restore_gw=$(awk "BEGIN{printf \"%.2f\", $(gateway_cpu) - $gw0}") restore_client=$phase_client_cpu
restore_s=$(awk "BEGIN{print $end - $start}")
qemu-img compare -U -F raw "$work/ref.qcow2" "$work/restored.raw" >/dev/null || { echo "s3-backup.sh: the restore differs" >&2; exit 1; }
rm -f "$work/restored.raw"
gw0=$(gateway_cpu)
timed_cpu "${s3[@]}" bench-get bench -t 8 --prefix plain/ >"$work/plain-get.json"
plain_get=$(<"$work/plain-get.json")
get_gw=$(awk "BEGIN{printf \"%.2f\", $(gateway_cpu) - $gw0}") get_client=$phase_client_cpu
echo "plain get: $plain_get" >&2
plain_get_chunks=$("${s3[@]}" bench-get bench -t 8 --prefix ferry/chunks/)
echo "plain get of ferry's chunk objects: $plain_get_chunks" >&2

python3 - "$backup_s" "$restore_s" "$stored" "$objects" "$plain_put" "$plain_get" "$puts" "$gets" "$lists" "$heads" "$deletes" "$chunk_size" "$CEPH_STARTUP_SECONDS" "$plain_get_chunks" \
  "$backup_gw $backup_client $put_gw $put_client $restore_gw $restore_client $get_gw $get_client" "${BENCH_PIN:-0}" <<'PY'
import json, sys
backup_s, restore_s = float(sys.argv[1]), float(sys.argv[2])
stored, objects = int(sys.argv[3]), int(sys.argv[4])
put, get = json.loads(sys.argv[5]), json.loads(sys.argv[6])
chunks_get = json.loads(sys.argv[14])
puts, gets, lists, heads, deletes = (int(x) for x in sys.argv[7:12])
mib = stored / 1048576
ferry_put = mib / backup_s
ferry_get = mib / restore_s
gib = stored / 1073741824
print(json.dumps({
    "bench": "s3-backup", "chunk_size": sys.argv[12], "chunk_objects": objects, "stored_bytes": stored,
    "backup_s": round(backup_s, 2), "ferry_put_mib_s": round(ferry_put, 1), "plain_put_mib_s": put["mib_s"],
    "backup_vs_plain": round(ferry_put / put["mib_s"], 2),
    "restore_s": round(restore_s, 2), "ferry_get_mib_s": round(ferry_get, 1), "plain_get_mib_s": get["mib_s"],
    "restore_vs_plain": round(ferry_get / get["mib_s"], 2),
    "plain_get_chunks_mib_s": chunks_get["mib_s"], "restore_vs_plain_chunks": round(ferry_get / chunks_get["mib_s"], 2),
    "backup_requests": {"put": puts, "get": gets, "list": lists, "head": heads, "delete": deletes},
    "backup_requests_per_gib_stored": round((puts + gets + lists + heads + deletes) / gib),
    "startup_s": float(sys.argv[13]),
    "pinned": sys.argv[16] == "1",
    # CPU seconds of the gateway (Ceph daemons) and of the client in each phase.
    "cpu_s": dict(zip(["backup_gateway", "backup_client", "put_gateway", "put_client",
                       "restore_gateway", "restore_client", "get_gateway", "get_client"],
                      (float(x) for x in sys.argv[15].split()))),
}))
PY
