#!/usr/bin/env bash
# ferry-worker reaching a libvirt host over the network (issue 13, item 3), as
# the worker appliance does: `--libvirt qemu+libssh://root@127.0.0.1:PORT/...`
# through a test sshd (its own host key in a known_hosts file, a client key),
# against the local libvirtd standing in for the host's. The worker runs as a
# host process: its path to libvirt and to the export is the appliance's.
# Checks: the domain shows up in GET /vms; a coordinator job backs it up, the
# pull-mode export over TCP (nbd://127.0.0.1:PORT/ferry-...), not a unix
# socket, and the point restores bit-exact; after guest writes the next run is
# incremental and bit-exact, and a dead session's lock is removed; nothing is
# left behind (no backup job, no scratch file, no session directory or lock); a shut-off domain is refused clearly; a worker
# killed mid-backup leaves a job its restart ends, and the run after succeeds;
# a job of a session the worker has no lock of is left alone, and said so;
# with TLS (the default) and no backup TLS on the host, the backup says what
# to set; with it (a CA, a server certificate in /etc/pki/qemu, a client
# certificate for the worker) the export is read over nbds://, bit-exact.
. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"
. "$TESTS_DIR/lib/sshd.sh"
# shellcheck source=../lib/libvirt.sh
. "$TESTS_DIR/lib/libvirt.sh"
on_exit lv_cleanup_all
lv_ensure_daemons || { echo "SKIP: no libvirtd"; exit 77; }
sshd_start "$WORK/sshd"
MiB=$((1024 * 1024))

# --- the "host": libvirtd with a running 1-disk domain and a shut-off one ---
chmod 755 "$WORK"  # images where libvirt's QEMU user can reach them
make_data_disk "$WORK/vda.qcow2" qcow2 $((48 * MiB))
make_data_disk "$WORK/off.qcow2" qcow2 $((4 * MiB))
DOM=ferry-rl-$$-$RANDOM
lv_define "$DOM" "vda=$WORK/vda.qcow2"
lv_define "$DOM-off" "vda=$WORK/off.qcow2"
lv_virsh destroy "$DOM-off" >/dev/null

URI="qemu+libssh://root@127.0.0.1:$SSHD_PORT/system?keyfile=$SSHD_KEY&known_hosts=$SSHD_KNOWN_HOSTS"
URI+="&known_hosts_verify=normal&sshauth=privkey"
virsh -c "$URI" -q domstate "$DOM" >/dev/null 2>"$WORK/virsh.err" ||
  fail "libvirt over libssh does not answer: $(cat "$WORK/virsh.err")"
ok "libvirt answers at $URI"

# --- coordinator, repository, the worker ---
DATA=$WORK/coord
coord_init "$DATA"
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --heartbeat-interval-ms 500 --heartbeat-deadline-ms 4000
"$FERRY" init --repo "$WORK/repo" --chunk-size 1M >/dev/null
api POST /repositories "{\"name\": \"main\", \"location\": \"$WORK/repo\", \"task_slots\": 4}" >/dev/null
PORT0=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
worker_token wl >"$WORK/wl.token"
start_worker() {
  worker_start l --token-file "$WORK/wl.token" --host host-l --libvirt "$URI" --libvirt-export-tls no \
    --export-ports "$PORT0-$((PORT0 + 20))" --runtime-dir "$WORK/w" --inventory-interval 1s --verbose "$@"
}
start_worker
vm_state_is() { [[ $(api GET "/vms?name=$1" | jpy "d['vms'][0]['state'] if d['vms'] else ''") == "$2" ]]; }
wait_for "$DOM in GET /vms" 30 vm_state_is "$DOM" paused
ok "the worker lists the remote libvirt's domains"

JOB=$(api POST /jobs "{\"name\": \"rl\", \"repository\": 1, \"selection\": {\"vms\": [\"$DOM\"]}, \"retries\": {\"count\": 0, \"interval_s\": 0}}" | jpy 'd["id"]')
run_session() {  # -> $S, $point; checked: succeeded, restores bit-exact, read over TCP
  lv_flush "$DOM" vda
  qemu-img convert -U -O raw "$WORK/vda.qcow2" "$WORK/ref-vda"
  S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
  wait_for "session $S to end" 180 session_ended "$S"
  api GET "/sessions/$S" >"$WORK/s$S.json"
  api GET "/sessions/$S/log" >"$WORK/log$S.json"
  [[ $(jpy 'd["state"]' <"$WORK/s$S.json") == succeeded ]] ||
    { cat "$WORK/log$S.json" >&2; tail -30 "$WORK/worker-l.log" >&2; fail "session $S: $(jpy '[d["state"], d.get("reason")]' <"$WORK/s$S.json")"; }
  point=$(jpy "d['snapshots'][0]['point_id']" <"$WORK/s$S.json")
  rm -f "$WORK/restored"
  "$FERRY" restore --repo "$WORK/repo" --point "$point" --disk vda --to "$WORK/restored" 2>/dev/null
  cmp -s "$WORK/restored" "$WORK/ref-vda" || fail "session $S: vda (point $point) does not restore bit-exact"
  grep -q "from nbd://127.0.0.1:[0-9]*/ferry-[0-9a-f]*-vda" "$WORK/log$S.json" ||
    fail "session $S did not read over TCP: $(cat "$WORK/log$S.json")"
  ! grep -q "nbd+unix\|nbds+unix" "$WORK/log$S.json" "$WORK/worker-l.log" || fail "session $S used a unix socket"
}
nothing_left() {  # no backup job, no scratch file, no session directory or lock
  ! lv_virsh backup-dumpxml "$DOM" >/dev/null 2>&1 || fail "a backup job is left on $DOM: $(lv_virsh backup-dumpxml "$DOM")"
  left=$(find "$WORK" -maxdepth 1 -name 'vda.qcow2?*'; find "$WORK"/w* -name 'libvirt-*' -o -name '*.lock' 2>/dev/null)
  [[ -z $left ]] || fail "left behind: $left"
}
T0=$SECONDS
run_session; S1=$S P1=$point
[[ $(field "$P1" vda cbt.mode) == full ]] || fail "point $P1: vda $(field "$P1" vda cbt.mode), expected full"
nothing_left
ok "session $S1 (full, $((SECONDS - T0)) s): vda restores bit-exact, read from nbd://127.0.0.1 (TCP); nothing left"

lv_write "$DOM" vda 0x5a $((3 * MiB)) $((2 * MiB))
lv_write "$DOM" vda 0x5b $((48 * MiB - 512)) 512
# The lock a dead session left whose job went with its QEMU: removed by the next run.
printf 'ferry-session 0123456789abcdee\nlibvirt %s\npid 1\n' "$(lv_virsh domuuid "$DOM")" >"$WORK/w/0123456789abcdee.lock"
T0=$SECONDS
run_session; S2=$S P2=$point
grep -q "removing the lock of dead ferry session 0123456789abcdee (domain $DOM)" "$WORK/worker-l.log" ||
  fail "the dead session's lock was not removed"
[[ $(field "$P2" vda cbt.mode) == incremental ]] ||
  fail "point $P2: vda $(field "$P2" vda cbt.mode) ($(field "$P2" vda cbt.reason)), expected incremental"
[[ $(field "$P2" vda stats.read_bytes) -le $((4 * MiB)) ]] || fail "the incremental read $(field "$P2" vda stats.read_bytes) bytes"
nothing_left
ok "guest writes: session $S2 ($((SECONDS - T0)) s) incremental, bit-exact; a dead session's lock removed; nothing left"

# --- a shut-off domain on a remote host: refused, saying why and what to do ---
JOB_OFF=$(api POST /jobs "{\"name\": \"off\", \"repository\": 1, \"selection\": {\"vms\": [\"$DOM-off\"]}, \"retries\": {\"count\": 0, \"interval_s\": 0}}" | jpy 'd["id"]')
wait_for "$DOM-off in GET /vms" 30 vm_state_is "$DOM-off" shut-off
S=$(api POST "/jobs/$JOB_OFF/start" | jpy 'd["session"]')
wait_for "session $S to end" 120 session_ended "$S"
api GET "/sessions/$S/log" >"$WORK/log$S.json"
[[ $(session_state "$S") == failed ]] || fail "the shut-off domain's session is $(session_state "$S")"
grep -q "domain $DOM-off at .* is shut off: .*virsh start --paused $DOM-off" "$WORK/log$S.json" ||
  fail "no clear refusal of the shut-off domain: $(cat "$WORK/log$S.json")"
kill -0 "${WORKER_PID[l]}" || fail "the worker died"
ok "a shut-off domain of a remote libvirt: refused, naming it and what to do"

# --- a worker killed mid-backup: its restart ends the job it left ---
lv_write "$DOM" vda 0x5c 0 $((16 * MiB))
worker_stop l
start_worker --rate-limit 1M
wait_for "the worker to register again" 30 vm_state_is "$DOM" paused
S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
job_running() { lv_virsh backup-dumpxml "$DOM" 2>/dev/null | grep -q "ferry-"; }
wait_for "a backup job on $DOM" 60 job_running
worker_kill9 l
job_running || fail "the killed worker's job is gone already"
start_worker
# The session ends either way (failed with the worker, or its work taken up
# again by the restarted one); the next one must succeed.
wait_for "session $S to end" 180 session_ended "$S"
echo "the killed worker's session $S: $(session_state "$S")"
T0=$SECONDS
run_session
grep -q "ending the backup job a dead ferry session" "$WORK/worker-l.log" || fail "the dead session's job was not ended"
nothing_left
ok "worker killed mid-backup: the restarted worker ended its job; session $S ($((SECONDS - T0)) s) bit-exact; nothing left"

# --- a job of a session this worker has no lock of (another worker's): left alone, the backup says how to end it ---
cat >"$WORK/other.xml" <<XML
<domainbackup mode='pull'><server transport='tcp' name='127.0.0.1' port='$((PORT0 + 21))'/>
<disks><disk name='vda' backup='yes' type='file' exportname='ferry-0123456789abcdef-vda'><scratch file='$WORK/other.scratch'/></disk></disks></domainbackup>
XML
lv_virsh backup-begin "$DOM" "$WORK/other.xml" >/dev/null || fail "could not start the other worker's job"
S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
wait_for "session $S to end" 120 session_ended "$S"
api GET "/sessions/$S/log" >"$WORK/log$S.json"
[[ $(session_state "$S") == failed ]] || fail "session $S is $(session_state "$S") with another worker's job on $DOM"
grep -q "has the backup job of ferry session 0123456789abcdef, which this worker does not know.*domjobabort $DOM" "$WORK/log$S.json" ||
  fail "no clear message about the other worker's job: $(cat "$WORK/log$S.json")"
lv_virsh backup-dumpxml "$DOM" | grep -q "ferry-0123456789abcdef-vda" || fail "the other worker's job was ended"
lv_virsh domjobabort "$DOM" >/dev/null
ok "another worker's job on the domain: left alone; the backup fails saying whose it is and how to end it"
worker_stop l

# --- the export with the host's backup TLS (x509; the default) ---
# libvirt's backup TLS directory is qemu.conf's default_tls_x509_cert_dir,
# /etc/pki/qemu here (read by QEMU when a backup asks for TLS, no libvirtd
# restart). Only a machine without one is used for this part: the test makes
# it and removes it again.
PKI=/etc/pki/qemu
if [[ -e $PKI ]] || grep -Eq '^\s*(backup|default)_tls_x509_cert_dir' /etc/libvirt/qemu.conf; then
  echo "SKIPPED PART: $PKI exists or qemu.conf sets a TLS directory; not touching the host's TLS setup"
  exit 0
fi
ca() { openssl req -x509 -newkey rsa:2048 -nodes -keyout "$1/ca-key.pem" -subj "/CN=ferry test CA" -days 2 -out "$1/ca-cert.pem" 2>/dev/null; }
sign() {  # CA-DIR CERT KEY CN SAN
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$5" >"$2.ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$3" -subj "/CN=$4" -out "$2.csr" 2>/dev/null &&
    openssl x509 -req -in "$2.csr" -CA "$1/ca-cert.pem" -CAkey "$1/ca-key.pem" -CAcreateserial -days 2 \
      -extfile "$2.ext" -out "$2" 2>/dev/null
  rm -f "$2.csr" "$2.ext"
}
mkdir -p "$WORK/ca" "$WORK/pki"
ca "$WORK/ca" || fail "openssl: no CA"
cp "$WORK/ca/ca-cert.pem" "$WORK/pki/"
sign "$WORK/ca" "$WORK/pki/client-cert.pem" "$WORK/pki/client-key.pem" ferry-worker DNS:ferry-worker || fail "openssl: no client certificate"
worker_token wt >"$WORK/wt.token"
worker_start t --token-file "$WORK/wt.token" --host host-l --libvirt "$URI" --libvirt-export-tls-dir "$WORK/pki" \
  --export-ports "$PORT0-$((PORT0 + 20))" --runtime-dir "$WORK/wt" --inventory-interval 1s
wait_for "the TLS worker to register" 30 grep -q "registered as worker" "$WORK/worker-t.log"
# No backup TLS on the host yet: a clear error saying what to set.
S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
wait_for "session $S to end" 120 session_ended "$S"
api GET "/sessions/$S/log" >"$WORK/log$S.json"
[[ $(session_state "$S") == failed ]] || fail "session $S is $(session_state "$S") without backup TLS on the host"
grep -q "could not set up TLS for its NBD export.*backup_tls_x509_cert_dir.*libvirt-export-tls = no" "$WORK/log$S.json" ||
  fail "no clear error without backup TLS on the host: $(cat "$WORK/log$S.json")"
ok "the host has no backup TLS: the backup fails saying so and what to set"
made=$PKI
[[ -d /etc/pki ]] || made=/etc/pki
on_exit "rm -rf $made"
mkdir -p "$PKI" && chmod 755 "$PKI"
cp "$WORK/ca/ca-cert.pem" "$PKI/"
sign "$WORK/ca" "$PKI/server-cert.pem" "$PKI/server-key.pem" 127.0.0.1 IP:127.0.0.1 || fail "openssl: no server certificate"
chmod 644 "$PKI"/*.pem  # QEMU may run as libvirt's QEMU user
lv_flush "$DOM" vda
qemu-img convert -U -O raw "$WORK/vda.qcow2" "$WORK/ref-vda"
T0=$SECONDS
S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
wait_for "session $S to end" 180 session_ended "$S"
api GET "/sessions/$S/log" >"$WORK/log$S.json"
[[ $(session_state "$S") == succeeded ]] || { tail -30 "$WORK/worker-t.log" >&2; fail "session $S with backup TLS: $(cat "$WORK/log$S.json")"; }
grep -q "from nbds://127.0.0.1:[0-9]*/ferry-[0-9a-f]*-vda" "$WORK/log$S.json" || fail "session $S did not read over nbds://: $(cat "$WORK/log$S.json")"
point=$(api GET "/sessions/$S" | jpy "d['snapshots'][0]['point_id']")
rm -f "$WORK/restored"
"$FERRY" restore --repo "$WORK/repo" --point "$point" --disk vda --to "$WORK/restored" 2>/dev/null
cmp -s "$WORK/restored" "$WORK/ref-vda" || fail "session $S: vda (point $point) does not restore bit-exact"
nothing_left
rm -rf "$made"
worker_stop t
ok "with the host's backup TLS: session $S ($((SECONDS - T0)) s) read from nbds://127.0.0.1 (x509, client certificate), bit-exact"
