#!/usr/bin/env bash
# The point store in the coordinator's model: a point staged under a given
# id, its two disks written at once by two processes, one of them killed -9
# mid-disk. The point cannot be committed until that disk is written again;
# staging survives between disk tasks (and other writers' sweeps); then it
# commits and restores bit-exact.
. "$(dirname "$0")/common.sh" "$@"

# Two sources with data and holes.
for d in a b; do
  truncate -s 48M "$WORK/$d.raw"
  head -c 24M /dev/urandom | dd of="$WORK/$d.raw" bs=1M seek=8 conv=notrunc status=none
done
"$FERRY" init --repo "$WORK/repo" --chunk-size 1M
point=20261201T120000.000000Z-5a5a5a
[[ $("$FERRY" stage --repo "$WORK/repo" --point "$point" --vm web01 --disk a --disk b --expires 2h) == "$point" ]] ||
  fail "stage did not print the point id"
expect_error 2 "is staged for another VM" "$FERRY" stage --repo "$WORK/repo" --point "$point" --vm web01 --disk a
expect_error 2 "not a duration" "$FERRY" stage --repo "$WORK/repo" --point "$point" --vm web01 --disk a --expires soon

# Two writers at once, slowed so one can be killed halfway.
"$FERRY" --quiet backup-disk --repo "$WORK/repo" --point "$point" --disk a --file "$WORK/a.raw" --rate-limit 6M &
writer_a=$!
"$FERRY" --quiet backup-disk --repo "$WORK/repo" --point "$point" --disk b --file "$WORK/b.raw" --rate-limit 12M &
writer_b=$!
sleep 1.5
expect_error 6 "being written" "$FERRY" commit --repo "$WORK/repo" --point "$point"
expect_error 6 "being written by another process" "$FERRY" backup-disk --repo "$WORK/repo" --point "$point" --disk a --file "$WORK/a.raw"
kill -0 $writer_a 2>/dev/null || fail "writer a ended before it could be killed"
kill -9 $writer_a
wait $writer_a 2>/dev/null || true
wait $writer_b || fail "writer b failed"
ok "two processes wrote at once; writer a killed -9 mid-disk, writer b finished"

# Between tasks nothing holds the point: another writer's sweep keeps it.
"$FERRY" stage --repo "$WORK/repo" --point 20261201T120001.000000Z-000001 --vm other --disk x --expires 1h >/dev/null
[[ -d $WORK/repo/staging/$point && -f $WORK/repo/staging/$point.stage/disk-1.json ]] ||
  fail "staging of $point did not survive: $(ls -R "$WORK/repo/staging")"
[[ ! -e $WORK/repo/staging/$point.stage/disk-0.json ]] || fail "the killed writer's disk has a record"
expect_error 3 "disk(s) a not written" "$FERRY" commit --repo "$WORK/repo" --point "$point"
[[ -z $(points "$WORK/repo") ]] || fail "a point became visible"
ok "the point cannot be committed without disk a; its staging survives the sweep"

"$FERRY" --quiet backup-disk --repo "$WORK/repo" --point "$point" --disk a --file "$WORK/a.raw"
[[ $("$FERRY" commit --repo "$WORK/repo" --point "$point") == "$point" ]] || fail "commit failed"
[[ $(points "$WORK/repo") == "$point" ]] || fail "points: $(points "$WORK/repo")"
[[ ! -e $WORK/repo/staging/$point && ! -e $WORK/repo/staging/$point.stage && ! -e $WORK/repo/staging/$point.lock ]] ||
  fail "staging left after commit: $(ls "$WORK/repo/staging")"
[[ $("$FERRY" commit --repo "$WORK/repo" --point "$point") == "$point" ]] || fail "a second commit is not a no-op"
for d in a b; do
  "$FERRY" restore --repo "$WORK/repo" --point "$point" --disk $d --to "$WORK/$d.out"
  cmp "$WORK/$d.raw" "$WORK/$d.out" || fail "disk $d restores wrong data"
done
"$FERRY" verify --repo "$WORK/repo" | grep -q '^OK' || fail "verify not clean"
ok "after writing disk a again the point commits and restores bit-exact"

"$FERRY" discard --repo "$WORK/repo" --point 20261201T120001.000000Z-000001
[[ -z $(ls "$WORK/repo/staging") ]] || fail "discard left: $(ls "$WORK/repo/staging")"
expect_error 2 "is committed" "$FERRY" discard --repo "$WORK/repo" --point "$point"
expect_error 3 "not staged" "$FERRY" backup-disk --repo "$WORK/repo" --point 20261201T120002.000000Z-000002 --disk a --file "$WORK/a.raw"
ok "discard removes staging; a committed point is never discarded"
