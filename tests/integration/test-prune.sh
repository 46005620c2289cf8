#!/usr/bin/env bash
# Retention and point locks through the real CLI (docs/retention.md): points
# made with stage/backup-disk/commit for two VMs; prune --dry-run removes
# nothing; prune removes exactly what it printed; a locked point survives
# prune and `ferry remove` until its lock expires (a real 4 s lock, no fake
# clock in the CLI); a point held by a running restore is skipped, not
# removed, and that restore still finishes bit-exact; every kept point
# verifies and restores bit-exact. Then, with FERRY_REPOSITORY set (ctest
# sets it), lock, remove and prune through a ferry-repository service, and
# space and gc run by it.
. "$(dirname "$0")/common.sh" "$@"
repo=$WORK/repo
# A locked point may carry the immutable flag (as root): clear it before the
# work directory is removed, whatever happened.
on_exit "chattr -R -i '$repo' 2>/dev/null"

"$FERRY" init --repo "$repo" --chunk-size 1M
# point VM IMAGE: a committed one-disk point of IMAGE; prints its id.
point() {
  local id
  id=$("$FERRY" stage --repo "$repo" --vm "$1" --disk d0 --expires 1h)
  "$FERRY" --quiet backup-disk --repo "$repo" --point "$id" --disk d0 --file "$2"
  "$FERRY" commit --repo "$repo" --point "$id"
}
declare -A image
web=() db=()
for i in 0 1 2 3 4; do
  truncate -s 64M "$WORK/web$i.raw"
  head -c 40M /dev/urandom | dd of="$WORK/web$i.raw" bs=1M seek=$((i + 2)) conv=notrunc status=none
  id=$(point web01 "$WORK/web$i.raw"); web+=("$id"); image[$id]=$WORK/web$i.raw
done
for i in 0 1; do
  truncate -s 8M "$WORK/db$i.raw"
  head -c 3M /dev/urandom | dd of="$WORK/db$i.raw" bs=1M seek=1 conv=notrunc status=none
  id=$(point db01 "$WORK/db$i.raw"); db+=("$id"); image[$id]=$WORK/db$i.raw
done
[[ $(points "$repo" | wc -l) -eq 7 ]] || fail "expected 7 points: $(points "$repo")"
ok "7 points of two VMs"

expect_error 2 "has no rule, so it would remove every unlocked point" "$FERRY" prune --repo "$repo"
expect_error 2 "option --keep-within: '3' is not a number of days" "$FERRY" prune --repo "$repo" --keep-within 3
expect_error 2 "option --keep-last: '0' is not a count" "$FERRY" prune --repo "$repo" --keep-last 0
expect_error 2 "unknown option --keep-hourly" "$FERRY" prune --repo "$repo" --keep-hourly 3
expect_error 2 "exactly one of --days N or --for DURATION" "$FERRY" lock --repo "$repo" --point "${web[0]}"
expect_error 3 "does not exist" "$FERRY" lock --repo "$repo" --point 20261201T000000.000000Z-000000 --days 1
expect_error 3 "does not exist" "$FERRY" remove --repo "$repo" --point 20261201T000000.000000Z-000000

# removed_by JSON: the ids a prune --json says it removed (or would remove).
removed_by() { python3 -c 'import json,sys; [print(p["id"]) for p in json.load(sys.stdin)["points"] if p["action"] != "keep"]'; }
dry=$("$FERRY" prune --repo "$repo" --keep-last 2 --dry-run)
echo "$dry"
[[ $(grep -c ' remove ' <<<"$dry") -eq 3 && $(grep -c ' keep ' <<<"$dry") -eq 4 ]] || fail "dry run: $dry"
for id in "${web[@]:0:3}"; do grep -q "^$id .* remove  dry run" <<<"$dry" || fail "dry run does not remove $id"; done
for id in "${web[@]:3}" "${db[@]}"; do grep -q "^$id .* keep    last [12]" <<<"$dry" || fail "dry run does not keep $id"; done
[[ $(points "$repo" | wc -l) -eq 7 ]] || fail "the dry run removed something"
vm_dry=$("$FERRY" prune --repo "$repo" --keep-last 1 --vm db01 --dry-run --json | removed_by)
[[ $vm_dry == "${db[0]}" ]] || fail "--vm db01 would remove '$vm_dry'"
ok "prune --dry-run names what it would remove and removes nothing; --vm limits it to one VM"

# Lock the oldest web point for 4 s.
lock_start=$SECONDS
"$FERRY" lock --repo "$repo" --point "${web[0]}" --for 4s --reason "test hold" | grep -q "locked until" || fail "lock"
"$FERRY" list --repo "$repo" | grep "^${web[0]} " | grep -q "until 20" || fail "list does not show the lock"
[[ $("$FERRY" list --repo "$repo" --json | python3 -c '
import json, sys
p = [p for p in json.load(sys.stdin)["points"] if p["id"] == sys.argv[1]][0]
print(p["lock"]["reason"], p["lock"]["active"])' "${web[0]}") == "test hold True" ]] || fail "list --json lock"
expect_error 2 "never shortened" "$FERRY" lock --repo "$repo" --point "${web[0]}" --for 1s
expect_error 2 "is locked until" "$FERRY" remove --repo "$repo" --point "${web[0]}"
if [[ $(id -u) -eq 0 ]] && lsattr -d "$repo/points/${web[0]}" 2>/dev/null | grep -q '^....i'; then
  ! rm -f "$repo/points/${web[0]}/manifest.json" 2>/dev/null || fail "root's rm removed a locked manifest"
  ok "the locked point's files carry the immutable flag: even root's rm fails"
fi
ok "a locked point is listed as such and refuses removal and shortening"

# A restore of web[1] holds its lease: caught while it holds it (stopped).
# lease_held DIR: some process holds a flock on the point directory DIR.
lease_held() { grep -q "FLOCK.*:$(stat -c %i "$1") " /proc/locks; }
restored=$WORK/restore-during-prune.raw
for attempt in 1 2 3 4 5 6 7 8; do
  rm -f "$restored"
  "$FERRY" --quiet restore --repo "$repo" --point "${web[1]}" --disk d0 --to "$restored" &
  restore_pid=$!
  caught=
  while kill -0 $restore_pid 2>/dev/null; do
    kill -STOP $restore_pid 2>/dev/null || break
    if lease_held "$repo/points/${web[1]}"; then caught=1; break; fi
    kill -CONT $restore_pid
    sleep 0.002
  done
  [[ -n $caught ]] && break
  wait $restore_pid || true
done
[[ -n $caught ]] || fail "never caught the restore holding its lease"
on_exit "kill -CONT $restore_pid 2>/dev/null"
ok "a restore of ${web[1]} is running (stopped while it holds its lease)"

out=$("$FERRY" prune --repo "$repo" --keep-last 2 --json)
echo "$out"
said=$(removed_by <<<"$out" | sort)
gone=$(comm -23 <(printf '%s\n' "${web[@]}" "${db[@]}" | sort) <(points "$repo" | sort))
[[ $gone == "${web[2]}" ]] || fail "prune removed '$gone', expected ${web[2]}"
python3 - "$out" "${web[0]}" "${web[1]}" "${web[2]}" <<'EOF' || fail "prune's report"
import json, sys
r = json.loads(sys.argv[1]); by = {p["id"]: p for p in r["points"]}
locked, leased, old = sys.argv[2:5]
assert by[locked]["action"] == "keep" and by[locked]["reasons"][0].startswith("locked until"), by[locked]
assert by[leased]["action"] == "skip" and "in use by a restore, verify or backup" in by[leased]["outcome"], by[leased]
assert by[old]["action"] == "remove" and by[old]["outcome"] == "removed", by[old]
assert (r["kept"], r["removed"], r["skipped"]) == (5, 1, 1), r
EOF
[[ $said == "$(printf '%s\n' "${web[1]}" "${web[2]}" | sort)" ]] || fail "prune printed '$said'"
ok "prune removed exactly what it printed: the locked point kept, the point being restored skipped"

kill -CONT $restore_pid
wait $restore_pid || fail "the restore during prune failed"
cmp "${image[${web[1]}]}" "$restored" || fail "the restore during prune is not bit-exact"
ok "the restore that held its point through the prune finished bit-exact"

# The lock expires (real time): then prune and remove may take it.
while ((SECONDS - lock_start < 5)); do sleep 0.5; done
"$FERRY" list --repo "$repo" | grep "^${web[0]} " | grep -q " - " || fail "an expired lock is still listed"
out=$("$FERRY" prune --repo "$repo" --keep-last 2)
echo "$out"
grep -q "^${web[0]} .* remove  removed" <<<"$out" || fail "the expired point was not pruned"
grep -q "^${web[1]} .* remove  removed" <<<"$out" || fail "the no longer leased point was not pruned"
[[ $(points "$repo" | sort) == "$(printf '%s\n' "${web[3]}" "${web[4]}" "${db[@]}" | sort)" ]] ||
  fail "left after prune: $(points "$repo")"
[[ -z $(ls -A "$repo/points" | grep -v '^20') ]] || fail "leftovers in points/: $(ls -A "$repo/points")"
ok "after its lock expired the point was removed; so was the point no longer in use"

# A locked point removed by hand after expiry.
"$FERRY" lock --repo "$repo" --point "${db[0]}" --for 2s
expect_error 2 "is locked until" "$FERRY" remove --repo "$repo" --point "${db[0]}"
sleep 3
"$FERRY" remove --repo "$repo" --point "${db[0]}"
[[ $(points "$repo" | grep -c "${db[0]}") -eq 0 ]] || fail "ferry remove left ${db[0]}"
ok "ferry remove refuses a locked point and removes it once the lock expired"

"$FERRY" verify --repo "$repo" | tee "$WORK/verify.out" | grep -q '^OK' || fail "verify: $(cat "$WORK/verify.out")"
for id in $(points "$repo"); do
  "$FERRY" restore --repo "$repo" --point "$id" --disk d0 --to "$WORK/$id.out"
  cmp "${image[$id]}" "$WORK/$id.out" || fail "point $id restores wrong data"
done
ok "every kept point verifies and restores bit-exact"

# The same through the repository service, when the test is given one
# (FERRY_REPOSITORY: the ferry-repository binary): locks use the service's
# clock, a lease taken through it holds the point.
if [[ -z ${FERRY_REPOSITORY:-} ]]; then
  ok "skipped the repository service part (FERRY_REPOSITORY not set)"
  exit 0
fi
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -days 2 \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$FERRY_REPOSITORY" grant --tokens "$WORK/tokens" --repository main >"$WORK/main.token"
cat >"$WORK/repository.conf" <<CONF
listen = 127.0.0.1:$port
tls-cert = $WORK/cert.pem
tls-key = $WORK/key.pem
repository = main=$repo
tokens = $WORK/tokens
CONF
"$FERRY_REPOSITORY" --config "$WORK/repository.conf" >>"$WORK/service.log" 2>&1 &
service_pid=$!
on_exit "kill -9 $service_pid 2>/dev/null"
for _ in $(seq 100); do grep -q "serving 1 repositor" "$WORK/service.log" && break; sleep 0.1; done
grep -q "serving 1 repositor" "$WORK/service.log" || fail "the repository service did not start: $(cat "$WORK/service.log")"
R=(--repo "ferry+tls://127.0.0.1:$port/main" --repo-token-file "$WORK/main.token" --repo-ca "$WORK/cert.pem"
   --repo-server-name localhost)
kept=$(points "$repo")
newest=$(tail -1 <<<"$kept")
"$FERRY" lock "${R[@]}" --point "$newest" --days 1 --reason "via service" | grep -q "locked until" || fail "lock via the service"
"$FERRY" list "${R[@]}" | grep "^$newest " | grep -q "until 20" || fail "list via the service does not show the lock"
expect_error 2 "is locked until" "$FERRY" remove "${R[@]}" --point "$newest"
out=$("$FERRY" prune "${R[@]}" --keep-last 1 --vm db01 --json)
[[ $(removed_by <<<"$out") == "" ]] || fail "prune via the service removed the locked point: $out"
out=$("$FERRY" prune "${R[@]}" --keep-last 1 --vm web01)
echo "$out"
[[ $(points "$repo" | wc -l) -eq 2 ]] || fail "prune via the service left: $(points "$repo")"
"$FERRY" verify "${R[@]}" | grep -q '^OK' || fail "verify via the service"
for id in $(points "$repo"); do
  "$FERRY" restore "${R[@]}" --point "$id" --disk d0 --to "$WORK/$id.svc.out"
  cmp "${image[$id]}" "$WORK/$id.svc.out" || fail "point $id restores wrong data through the service"
done
ok "lock, list, remove and prune through the repository service; the locked point stays; kept points verify and restore"

# GC and space accounting through the service, which runs them on its
# directory: the figures are those of `ferry space` on the directory, and
# the GC frees what the prune above left as garbage, nothing referenced.
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
svc_space=$("$FERRY" space "${R[@]}" --json)
[[ $svc_space == "$("$FERRY" space --repo "$repo" --json)" ]] || fail "space through the service differs: $svc_space"
garbage=$(json_field garbage_bytes <<<"$svc_space")
((garbage > 0)) || fail "the prune left no garbage: $svc_space"
python3 -c 'import json,sys; c = json.load(sys.stdin)["chains"]; assert len(c) == 1 and c[0]["points"] == 2, c' \
  <<<"$svc_space" || fail "space through the service: chains $svc_space"
"$FERRY" space "${R[@]}" | grep -q "^CHAIN " || fail "ferry space prints no chain table"
gc=$("$FERRY" gc "${R[@]}" --window 0 --json)
[[ $(json_field bytes_removed <<<"$gc") == "$garbage" ]] || fail "the GC through the service freed other than the garbage: $gc"
[[ $("$FERRY" space "${R[@]}" --json | json_field garbage_chunks) == 0 ]] || fail "garbage left after the GC"
"$FERRY" verify "${R[@]}" | grep -q '^OK' || fail "verify after the GC through the service"
for id in $(points "$repo"); do
  "$FERRY" restore "${R[@]}" --point "$id" --disk d0 --to "$WORK/$id.gc.out"
  cmp "${image[$id]}" "$WORK/$id.gc.out" || fail "point $id restores wrong data after the GC"
done
ok "space and gc --repo ferry+tls://...: run by the service; the garbage of the prune freed, kept points verify and restore"
