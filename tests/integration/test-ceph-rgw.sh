#!/usr/bin/env bash
# The test Ceph cluster of tests/lib/ceph.sh and the S3 client tests/lib/s3.py
# against it: a bucket, a 20 MiB object PUT and GET bit-exact, listing with
# paging, deletes, grep, radosgw killed (SIGKILL) and restarted with the object
# still there, and every daemon gone (by pid) after the stop. Needs no ferry
# binary (an argument is accepted and ignored, like the other integration
# tests). Skips (77) without the Ceph packages. docs/object-storage-tests.md.
set -euo pipefail

TESTS_DIR=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../lib/ceph.sh
. "$TESTS_DIR/lib/ceph.sh"
S3=(python3 "$TESTS_DIR/lib/s3.py")

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-ceph-XXXXXX")
_exit() {
  local rc=$?
  set +e
  ceph_cleanup "$rc"
  if ((rc == 0 || rc == 77)); then rm -rf "$WORK"; else echo "kept for diagnosis: $WORK" >&2; fi
  if ((rc == 0)); then echo "PASS: $(basename "$0")"
  elif ((rc == 77)); then echo "SKIP: $(basename "$0")"
  else echo "FAIL: $(basename "$0") (exit $rc)"; fi
  exit $rc
}
trap _exit EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok [${SECONDS}s]: $*"; }

ceph_start "$WORK/ceph" || fail "the cluster did not start"
[[ $CEPH_S3_ENDPOINT == http://127.0.0.1:"$CEPH_RGW_PORT" ]] || fail "CEPH_S3_ENDPOINT is '$CEPH_S3_ENDPOINT'"
[[ -n $CEPH_S3_ACCESS_KEY && -n $CEPH_S3_SECRET_KEY && -n $CEPH_S3_REGION ]] || fail "the S3 variables are not all set"
started_pids=$(ceph_pids)
(($(wc -l <<<"$started_pids") == 4)) || fail "expected 4 daemons, running: $started_pids"
ok "cluster up in ${CEPH_STARTUP_SECONDS}s, $(($(ceph_rss_kib) / 1024)) MiB RSS, S3 at $CEPH_S3_ENDPOINT region $CEPH_S3_REGION"

# A wrong secret is refused (the signature is checked, not just accepted).
if CEPH_S3_SECRET_KEY=wrong "${S3[@]}" lb 2>"$WORK/err"; then fail "a wrong secret key was accepted"; fi
grep -q SignatureDoesNotMatch "$WORK/err" || fail "a wrong secret key: $(cat "$WORK/err")"
ok "a wrong secret key is refused: $(cat "$WORK/err")"

B=ferry-test
"${S3[@]}" mb "$B" || fail "mb $B"
[[ $("${S3[@]}" lb) == *"$B"* ]] || fail "bucket $B not in the bucket list"
ok "bucket $B"

head -c $((20 << 20)) /dev/urandom >"$WORK/big"
"${S3[@]}" put "$B" dir/big "$WORK/big" || fail "put 20 MiB"
"${S3[@]}" get "$B" dir/big "$WORK/big.back" || fail "get 20 MiB"
want=$(sha256sum <"$WORK/big") got=$(sha256sum <"$WORK/big.back")
[[ $want == "$got" ]] || fail "20 MiB object differs after GET ($want vs $got)"
[[ $("${S3[@]}" head "$B" dir/big) == $((20 << 20)) ]] || fail "HEAD size"
ok "20 MiB PUT/GET bit-exact (${want%% *})"

# A key with characters SigV4 must encode, and an empty object.
printf 'spaced' >"$WORK/small"
"${S3[@]}" put "$B" "dir/a key+with=odd&chars~" "$WORK/small" || fail "put odd key"
"${S3[@]}" get "$B" "dir/a key+with=odd&chars~" "$WORK/small.back" || fail "get odd key"
cmp -s "$WORK/small" "$WORK/small.back" || fail "odd key content"
: >"$WORK/empty"
"${S3[@]}" put "$B" dir/empty "$WORK/empty" || fail "put empty"
"${S3[@]}" get "$B" dir/empty "$WORK/empty.back" || fail "get empty"
[[ -f $WORK/empty.back && ! -s $WORK/empty.back ]] || fail "empty object not empty"
ok "odd key and empty object"

# Listing: more than one page (1000 keys a page) under a prefix.
python3 - "$TESTS_DIR/lib" "$B" <<'EOF' || fail "putting 1100 small objects"
import sys, threading
sys.path.insert(0, sys.argv[1])
import s3
c, b = s3.Client(), sys.argv[2]
def w(i):
    for j in range(i, 1100, 8):
        c.put(b, f"many/{j:05d}", b"x%d" % j)
ts = [threading.Thread(target=w, args=(i,)) for i in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
EOF
"${S3[@]}" ls "$B" many/ >"$WORK/ls" || fail "ls many/"
(($(wc -l <"$WORK/ls") == 1100)) || fail "ls many/ gave $(wc -l <"$WORK/ls") keys, expected 1100"
[[ $(head -1 "$WORK/ls") == "many/00000 2" && $(tail -1 "$WORK/ls") == "many/01099 5" ]] ||
  fail "ls many/: first/last $(head -1 "$WORK/ls") / $(tail -1 "$WORK/ls")"
"${S3[@]}" ls "$B" dir/ >"$WORK/ls" || fail "ls dir/"
[[ $(cat "$WORK/ls") == "dir/a key+with=odd&chars~ 6"$'\n'"dir/big $((20 << 20))"$'\n'"dir/empty 0" ]] ||
  fail "ls dir/: $(cat "$WORK/ls")"
ok "ls: 1100 keys over two pages, sizes right"

# grep: exit 1 when a marker is in an object, 0 when not.
marker=$(head -c 64 "$WORK/big" | tail -c 16 | od -An -tx1 | tr -d ' \n')
if "${S3[@]}" grep "$B" dir/ "$marker" 2>"$WORK/err"; then fail "grep missed a marker in dir/big"; fi
grep -q "dir/big" "$WORK/err" || fail "grep did not name dir/big: $(cat "$WORK/err")"
"${S3[@]}" grep "$B" dir/ 00112233445566778899aabbccddeeff0011 2>/dev/null || fail "grep found an absent marker"
ok "grep finds a marker and reports its absence"

# Deletes: objects, then a bucket that is not empty is refused, then removed.
"${S3[@]}" rm "$B" dir/empty || fail "rm dir/empty"
if "${S3[@]}" get "$B" dir/empty "$WORK/gone" 2>"$WORK/err"; then fail "dir/empty still readable after rm"; fi
grep -q NoSuchKey "$WORK/err" || fail "get after rm: $(cat "$WORK/err")"
[[ ! -e $WORK/gone ]] || fail "a failed get left its file"
B2=ferry-test-2
"${S3[@]}" mb "$B2" || fail "mb $B2"
"${S3[@]}" put "$B2" x "$WORK/small" || fail "put $B2/x"
if "${S3[@]}" rb "$B2" 2>"$WORK/err"; then fail "a non-empty bucket was removed"; fi
grep -q BucketNotEmpty "$WORK/err" || fail "rb non-empty: $(cat "$WORK/err")"
"${S3[@]}" rm "$B2" x || fail "rm $B2/x"
"${S3[@]}" rb "$B2" || fail "rb $B2"
[[ $("${S3[@]}" lb) != *"$B2"* ]] || fail "bucket $B2 still listed"
ok "rm, rb (refused while not empty)"

# radosgw killed with SIGKILL, restarted on the same port: data still there.
old_rgw=$CEPH_RGW_PID
ceph_kill_rgw || fail "killing radosgw"
[[ ! -e /proc/$old_rgw ]] || fail "radosgw $old_rgw still in /proc after ceph_kill_rgw"
if "${S3[@]}" lb 2>/dev/null; then fail "S3 answered with radosgw killed"; fi
ceph_restart_rgw || fail "restarting radosgw"
[[ $CEPH_RGW_PID != "$old_rgw" ]] || fail "radosgw pid unchanged"
[[ $CEPH_S3_ENDPOINT == http://127.0.0.1:"$CEPH_RGW_PORT" ]] || fail "endpoint changed"
"${S3[@]}" get "$B" dir/big "$WORK/big.again" || fail "get after the restart"
[[ $(sha256sum <"$WORK/big.again") == "$want" ]] || fail "20 MiB object differs after the radosgw restart"
ok "radosgw SIGKILLed and restarted (pid $old_rgw -> $CEPH_RGW_PID), 20 MiB object intact"

"${S3[@]}" rm "$B" dir/big || fail "rm dir/big"
ok "$(ceph_cli df 2>/dev/null | awk '/^TOTAL/ {print "raw used " $8 " " $9; exit}')"

# Stop: every daemon we started is gone (not a zombie), by pid.
all_pids=$(printf '%s\n' $started_pids "$CEPH_RGW_PID" | sort -u)
t0=$(date +%s%N)
ceph_stop || fail "ceph_stop"
stop_ms=$((($(date +%s%N) - t0) / 1000000))
for p in $all_pids; do
  [[ ! -e /proc/$p ]] || fail "pid $p ($(cat /proc/"$p"/comm 2>/dev/null)) still exists after ceph_stop"
done
[[ -z $(ceph_pids) ]] || fail "ceph_pids not empty after ceph_stop"
ok "stopped in ${stop_ms} ms; none of $(echo $all_pids) is left"
