#!/usr/bin/env bash
# Copies of restore points (ferry copy, docs/copy.md): from a local
# repository into a bucket of a real one-node Ceph RGW and back into another
# local repository. Only the chunks the target lacks travel (counted in the
# bucket and in the copy's report); the copies verify at the target and
# restore bit-exact; a copy killed with SIGKILL leaves no point and the next
# run finishes it; the target's own retention applies. Then a copy job of a
# real coordinator (docs/copy.md, "Copy jobs"), made with the CLI, copies the
# source job's new point into the bucket, sending only its new chunks, and
# applies its own retention there.
. "$(dirname "$0")/common.sh" "$@"
# shellcheck source=../lib/ceph.sh
. "$TESTS_DIR/lib/ceph.sh"
. "$TESTS_DIR/lib/coordinator.sh"
S3=(python3 "$TESTS_DIR/lib/s3.py")
on_exit 'ceph_cleanup "$rc"'

ceph_start "$WORK/ceph" || fail "the cluster did not start"
"${S3[@]}" mb offsite
export FERRY_S3_ACCESS_KEY=$CEPH_S3_ACCESS_KEY FERRY_S3_SECRET_KEY=$CEPH_S3_SECRET_KEY
BUCKET="s3://offsite/copies?endpoint=$CEPH_S3_ENDPOINT&region=$CEPH_S3_REGION"
LOCAL=$WORK/repo
chunk_objects() { "${S3[@]}" ls offsite copies/chunks/ | wc -l; }
report() {  # JSON-FILE KEY
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

make_data_disk "$WORK/d0.qcow2" qcow2 48M
VM_NAME=copy-vm vm_start "$WORK/vm" "virtio0=$WORK/d0.qcow2"
"$FERRY" init --repo "$LOCAL" --chunk-size 1M
first=$("$FERRY" backup --repo "$LOCAL" --qmp "$WORK/vm/qmp.sock" --vm copy-vm 2>/dev/null)
snapshot_copy "$WORK/d0.qcow2" "$WORK/d0-first.raw" "$WORK/vm" virtio0
local_chunks=$(find "$LOCAL/chunks" -type f | wc -l)
"$FERRY" init --repo "$BUCKET" --chunk-size 1M

# --- the first copy sends every chunk, once.
"$FERRY" copy --repo "$LOCAL" --to "$BUCKET" --dry-run --json >"$WORK/dry.json"
[[ $(report "$WORK/dry.json" chunks_sent) == "$local_chunks" ]] || fail "dry run would send $(report "$WORK/dry.json" chunks_sent) of $local_chunks chunks"
(($(chunk_objects) == 0)) || fail "a dry run stored chunks"
[[ -z $(points "$BUCKET") ]] || fail "a dry run made a point"
"$FERRY" copy --repo "$LOCAL" --to "$BUCKET" --json >"$WORK/copy1.json"
[[ $(report "$WORK/copy1.json" chunks_sent) == "$local_chunks" ]] || fail "first copy sent $(report "$WORK/copy1.json" chunks_sent) chunks, the source has $local_chunks"
(($(chunk_objects) == local_chunks)) || fail "the bucket holds $(chunk_objects) chunks, expected $local_chunks"
local_bytes=$(find "$LOCAL/chunks" -type f -printf '%s\n' | awk '{s += $1} END {print s}')
[[ $(report "$WORK/copy1.json" bytes_sent) == "$local_bytes" ]] || fail "first copy sent $(report "$WORK/copy1.json" bytes_sent) bytes, the chunks are $local_bytes"
[[ $(points "$BUCKET") == "$first" ]] || fail "the bucket does not hold exactly point $first"
ok "first copy: $local_chunks chunks ($local_bytes bytes) sent, point $first in the bucket"

"$FERRY" verify --repo "$BUCKET" >"$WORK/verify.log" 2>&1 || fail "verify at the target: $(cat "$WORK/verify.log")"
"$FERRY" restore --repo "$BUCKET" --point "$first" --disk virtio0 --to "$WORK/r-first.raw"
same_content "$WORK/r-first.raw" "$WORK/d0-first.raw"
ok "the copy verifies at the target and restores bit-exact"

# --- again: nothing travels.
"$FERRY" copy --repo "$LOCAL" --to "$BUCKET" --json >"$WORK/copy2.json"
[[ $(report "$WORK/copy2.json" chunks_sent) == 0 ]] || fail "a repeated copy sent chunks"
grep -q '"outcome":"present"' "$WORK/copy2.json" || fail "a repeated copy did not see the point present"
ok "a repeated copy sends nothing"

# --- an incremental at the source: only its new chunks travel.
head -c $((5 << 20)) /dev/urandom >"$WORK/random.bin"
vm_qemu_io "$WORK/vm" virtio0 "write -s $WORK/random.bin $((4 << 20)) $((5 << 20))" >/dev/null
second=$("$FERRY" backup --repo "$LOCAL" --qmp "$WORK/vm/qmp.sock" --vm copy-vm 2>/dev/null)
snapshot_copy "$WORK/d0.qcow2" "$WORK/d0-second.raw" "$WORK/vm" virtio0
new=$(find "$LOCAL/chunks" -type f | wc -l)
new=$((new - local_chunks))
"$FERRY" copy --repo "$LOCAL" --to "$BUCKET" --json >"$WORK/copy3.json"
[[ $(report "$WORK/copy3.json" chunks_sent) == "$new" ]] || fail "the incremental's copy sent $(report "$WORK/copy3.json" chunks_sent) chunks; the source stored $new new ones"
"$FERRY" restore --repo "$BUCKET" --point "$second" --disk virtio0 --to "$WORK/r-second.raw"
same_content "$WORK/r-second.raw" "$WORK/d0-second.raw"
ok "the incremental's copy sent only its $new new chunks; restores bit-exact"

# --- a copy killed mid-way leaves no point; the next run finishes it.
head -c $((16 << 20)) /dev/urandom >"$WORK/random.bin"
vm_qemu_io "$WORK/vm" virtio0 "write -s $WORK/random.bin $((20 << 20)) $((16 << 20))" >/dev/null
chunks_before=$(find "$LOCAL/chunks" -type f | wc -l)
third=$("$FERRY" backup --repo "$LOCAL" --qmp "$WORK/vm/qmp.sock" --vm copy-vm 2>/dev/null)
third_new=$(($(find "$LOCAL/chunks" -type f | wc -l) - chunks_before))
before=$(chunk_objects)
"$FERRY" copy --repo "$LOCAL" --to "$BUCKET" --point "$third" --bandwidth 2MiB/s >/dev/null 2>"$WORK/killed.log" &
copy_pid=$!
deadline=$((SECONDS + 60))
until (($(chunk_objects) > before)); do
  ((SECONDS < deadline)) || fail "the copy sent nothing in 60 s: $(cat "$WORK/killed.log")"
  sleep 0.05
done
kill -9 "$copy_pid"
wait "$copy_pid" 2>/dev/null || true
points "$BUCKET" | grep -qx "$third" && fail "a killed copy left point $third visible"
"$FERRY" copy --repo "$LOCAL" --to "$BUCKET" --json >"$WORK/copy4.json"
sent=$(report "$WORK/copy4.json" chunks_sent)
points "$BUCKET" | grep -qx "$third" || fail "the rerun did not copy $third"
((sent < third_new)) || fail "the rerun sent $sent chunks: none of the $third_new the killed copy sent was kept"
"$FERRY" verify --repo "$BUCKET" >"$WORK/verify2.log" 2>&1 || fail "verify after the rerun: $(cat "$WORK/verify2.log")"
ok "a killed copy left no point; the rerun copied $third (sent $sent chunks) and the bucket verifies"

# --- and back: bucket to another local repository; the target's retention applies.
"$FERRY" init --repo "$WORK/second-site" --chunk-size 1M
"$FERRY" copy --repo "$BUCKET" --to "$WORK/second-site" >/dev/null
[[ $(points "$WORK/second-site" | wc -l) == 3 ]] || fail "the second site does not hold the 3 points"
"$FERRY" restore --repo "$WORK/second-site" --point "$second" --disk virtio0 --to "$WORK/r-back.raw"
same_content "$WORK/r-back.raw" "$WORK/d0-second.raw"
"$FERRY" prune --repo "$WORK/second-site" --keep-last 1 >/dev/null
[[ $(points "$WORK/second-site") == "$third" ]] || fail "prune at the target did not keep just the last point"
[[ $(points "$LOCAL" | wc -l) == 3 ]] || fail "prune at the target touched the source"
ok "bucket to local copy restores bit-exact; the target's retention keeps its own points"

expect_error 2 "into itself" "$FERRY" copy --repo "$LOCAL" --to "$LOCAL"
expect_error 2 "missing required option --to" "$FERRY" copy --repo "$LOCAL"

# --- a copy job of the coordinator: local repository -> bucket.
coord_init "$WORK/coord"
coord_start "$WORK/coord" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --gc-window 0
C=("$FERRY" --coordinator "$API")
"${C[@]}" repo add main --location "$LOCAL" >/dev/null
"${C[@]}" repo add offsite --location "$BUCKET" >/dev/null
chain=$("$FERRY" list --repo "$LOCAL" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["points"][0]["chain"])')
# The source job: its chain is the CLI backups' (it never runs here).
"${C[@]}" job create nightly --repo main --vm copy-vm --chain "$chain" >/dev/null
expect_error 2 "is the repository of source job" "${C[@]}" job create bad --copy-from nightly --repo main
expect_error 2 "for backup jobs" "${C[@]}" job create bad --copy-from nightly --repo offsite --vm copy-vm
COPY=$("${C[@]}" job create offsite --copy-from nightly --repo offsite --keep-last 2 | jpy 'd["id"]') || fail "copy job create"
[[ $(api GET "/jobs/$COPY" | jpy 'd["kind"] + " " + d["chain"]["name"]') == "copy $chain" ]] || fail "the copy job: $(api GET "/jobs/$COPY")"

head -c $((3 << 20)) /dev/urandom >"$WORK/random.bin"
vm_qemu_io "$WORK/vm" virtio0 "write -s $WORK/random.bin $((40 << 20)) $((3 << 20))" >/dev/null
chunks_before=$(find "$LOCAL/chunks" -type f | wc -l)
fourth=$("$FERRY" backup --repo "$LOCAL" --qmp "$WORK/vm/qmp.sock" --vm copy-vm 2>/dev/null)
snapshot_copy "$WORK/d0.qcow2" "$WORK/d0-fourth.raw" "$WORK/vm" virtio0
fourth_new=$(($(find "$LOCAL/chunks" -type f | wc -l) - chunks_before))
objects_before=$(chunk_objects)
"${C[@]}" job start offsite --watch >"$WORK/copy-job.log" 2>&1 || fail "the copy session did not succeed: $(cat "$WORK/copy-job.log")"
S=$(api GET "/sessions?kind=copy&job=$COPY" | jpy 'd["sessions"][0]["id"]')
reason=$(api GET "/sessions/$S" | jpy 'd["reason"]')
[[ $reason == "1 point(s) copied, 3 already at the target; $fourth_new chunk(s) sent"* ]] || fail "copy session $S: $reason"
(($(chunk_objects) == objects_before + fourth_new)) || fail "the bucket gained $(($(chunk_objects) - objects_before)) chunks, the new point has $fourth_new"
lifecycle_done() { [[ $(api GET "/sessions/$1" | jpy '(d["lifecycle"] or {}).get("state")') =~ ^(done|failed)$ ]]; }
wait_for "copy session $S's lifecycle step" 60 lifecycle_done "$S"
# Its retention (keep-last 2) applied in the bucket only.
[[ $(points "$BUCKET" | sort | tr '\n' ' ') == "$(printf '%s\n' "$third" "$fourth" | sort | tr '\n' ' ')" ]] ||
  fail "the bucket holds $(points "$BUCKET" | tr '\n' ' '), expected the last two ($third $fourth): $(api GET "/sessions/$S")"
[[ $(points "$LOCAL" | wc -l) == 4 ]] || fail "the copy job's retention touched the source"
[[ $(api GET "/points?job=$COPY" | jpy "[p['point_id'] for p in d['points'] if p['vm'] == 'copy-vm']") == *"$fourth"* ]] ||
  fail "the copy is not the copy job's point: $(api GET "/points?job=$COPY")"
"$FERRY" restore --repo "$BUCKET" --point "$fourth" --disk virtio0 --to "$WORK/r-fourth.raw"
same_content "$WORK/r-fourth.raw" "$WORK/d0-fourth.raw"
"$FERRY" verify --repo "$BUCKET" >"$WORK/verify3.log" 2>&1 || fail "verify after the copy job: $(cat "$WORK/verify3.log")"
ok "a copy job sent only the new point's $fourth_new chunks, kept 2 points in the bucket, and the copy restores bit-exact"
