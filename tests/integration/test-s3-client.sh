#!/usr/bin/env bash
# Ferry's S3 client, chunk store and point store (common/s3, the gtest binary
# s3_test) against a real one-node Ceph RGW (tests/lib/ceph.sh): objects,
# ranges, multipart, paging, a wrong secret, missing digests from one
# listing, parallel uploads, quarantine, and a repository in a bucket (init,
# commit visibility, leases, locks, removal, expiry). The same binary's
# cases that need no store run in `ctest -R s3.` without this script.
# Usage: test-s3-client.sh S3_TEST_BINARY. Skips (77) without Ceph.
set -euo pipefail
S3_TEST=$(realpath "${1:?usage: test-s3-client.sh PATH-TO-s3_test}")
TESTS_DIR=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../lib/ceph.sh
. "$TESTS_DIR/lib/ceph.sh"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-s3-client-XXXXXX")
_exit() {
  local rc=$?
  set +e
  ceph_cleanup "$rc"
  if ((rc == 0 || rc == 77)); then rm -rf "$WORK"; else echo "kept for diagnosis: $WORK" >&2; fi
  if ((rc == 0)); then echo "PASS: $(basename "$0")"; elif ((rc == 77)); then echo "SKIP: $(basename "$0")"; else echo "FAIL: $(basename "$0") (exit $rc)"; fi
  exit $rc
}
trap _exit EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

ceph_start "$WORK/ceph" || fail "the cluster did not start"
export FERRY_TEST_S3_ENDPOINT=$CEPH_S3_ENDPOINT FERRY_TEST_S3_REGION=$CEPH_S3_REGION \
  FERRY_TEST_S3_ACCESS_KEY=$CEPH_S3_ACCESS_KEY FERRY_TEST_S3_SECRET_KEY=$CEPH_S3_SECRET_KEY \
  FERRY_TEST_S3_BUCKET=ferry-test
"$S3_TEST" 2>&1 | tee "$WORK/gtest.log"
status=${PIPESTATUS[0]}
((status == 0)) || fail "s3_test failed against the RGW"
# Every store case ran (none skipped): the cases above must not pass by skipping.
if grep -q "SKIPPED" "$WORK/gtest.log"; then fail "store cases were skipped though a store was given"; fi
ran=$("$S3_TEST" --gtest_list_tests | grep -c '^  ')
echo "ok: $ran cases against $CEPH_S3_ENDPOINT"
