#!/usr/bin/env bash
# Plain parallel S3 client baseline against the test Ceph (tests/lib/ceph.sh:
# one mon, mgr, bluestore OSD on a sparse file, radosgw on 127.0.0.1): what a
# plain client gets from this radosgw, none of Ferry's code. tests/lib/s3.py
# bench-put with BENCH_THREADS threads (8) uploads BENCH_TOTAL_MIB (1024) of
# random data in BENCH_OBJECT_MIB (8) objects, then bench-get reads them all
# back. Prints one JSON line: put_mib_s, get_mib_s, requests, the Ceph
# daemons' RSS in MiB after the run (ceph_rss_mib) and the sum of their peaks
# (ceph_peak_rss_mib, VmHWM), startup_s. Not registered in ctest.
# BENCH_UNSIGNED=1: PUT bodies as UNSIGNED-PAYLOAD (no client-side SHA-256).
# Usage: bench/rgw-plain.sh [WORKDIR]   (default /var/tmp/ferry-bench-rgw; its
# cluster state is removed afterwards unless BENCH_KEEP=1)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/var/tmp/ferry-bench-rgw}
threads=${BENCH_THREADS:-8}
total_mib=${BENCH_TOTAL_MIB:-1024}
object_mib=${BENCH_OBJECT_MIB:-8}
count=$((total_mib / object_mib))
((count > 0)) || { echo "rgw-plain.sh: BENCH_TOTAL_MIB < BENCH_OBJECT_MIB" >&2; exit 2; }

# shellcheck source=../tests/lib/ceph.sh
. "$root/tests/lib/ceph.sh"
s3=(python3 "$root/tests/lib/s3.py")
rm -rf "$work/ceph"
mkdir -p "$work"
_exit() {
  local rc=$?
  set +e
  ceph_cleanup "$rc"
  [[ ${BENCH_KEEP:-0} == 1 || $rc != 0 ]] || rm -rf "$work/ceph"
  exit $rc
}
trap _exit EXIT

[[ ${BENCH_UNSIGNED:-0} == 0 ]] || export CEPH_S3_UNSIGNED_PAYLOAD=1
CEPH_VERBOSE=0 ceph_start "$work/ceph" >&2
"${s3[@]}" mb bench
put=$("${s3[@]}" bench-put bench -t "$threads" -n "$count" -s $((object_mib << 20)) --prefix plain/)
echo "put: $put" >&2
get=$("${s3[@]}" bench-get bench -t "$threads" --prefix plain/)
echo "get: $get" >&2
rss=$(ceph_rss_kib)
peak=0
for p in $(ceph_pids); do
  kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status")
  peak=$((peak + ${kib:-0}))
done
ceph_stop
python3 - "$put" "$get" "$rss" "$peak" "$CEPH_STARTUP_SECONDS" "$threads" "$object_mib" "${BENCH_UNSIGNED:-0}" <<'EOF'
import json, sys
put, get = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert put["bytes"] == get["bytes"], (put, get)
print(json.dumps({
    "bench": "rgw-plain", "threads": int(sys.argv[6]), "object_mib": int(sys.argv[7]),
    "objects": put["requests"], "bytes": put["bytes"],
    "put_mib_s": put["mib_s"], "get_mib_s": get["mib_s"],
    "requests": put["requests"] + get["requests"],  # object PUTs and GETs
    "ceph_rss_mib": round(int(sys.argv[3]) / 1024), "ceph_peak_rss_mib": round(int(sys.argv[4]) / 1024),
    "startup_s": float(sys.argv[5]), "unsigned_payload": sys.argv[8] == "1",
}))
EOF
