#!/usr/bin/env bash
# ferry-worker reaching its host's QEMU through SSH (issue 13, item 3): the
# "host" is a mount namespace of this machine in which a test sshd and the
# VMs' QEMU run, and whose QMP directory, runtime and scratch directories are
# a tmpfs the worker, outside it, cannot see. So everything the worker does on
# the host (list the QMP sockets and mirror them, write the TLS-PSK key, have
# QEMU create and remove overlays, clean up) must go through its one SSH
# connection, and its reads go over TCP with TLS-PSK.
# Checks: the VMs show up (and go) in GET /vms; a full run verifies and
# restores bit-exact, its exports TCP; after guest writes and a killed ssh
# master (the worker reconnects) a second run is incremental and bit-exact;
# no PSK appears in any log; nothing is left in QEMU or on the host; a
# refused key and an unknown host key give clear errors naming the host, and
# the worker keeps running.
. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"
. "$TESTS_DIR/lib/sshd.sh"
command -v unshare >/dev/null && command -v nsenter >/dev/null || { echo "SKIP: needs unshare and nsenter"; exit 77; }
MiB=$((1024 * 1024))

# --- the host: a mount namespace with its own /var/run/qemu-server, /run/ferry, /var/tmp/ferry ---
HOST=$WORK/host
mkdir -p "$HOST"
unshare -m --propagation private sleep 100000 &
NS_PID=$!
on_exit "kill $NS_PID 2>/dev/null"
on_host() { nsenter -t "$NS_PID" -m -- "$@"; }
for _ in $(seq 50); do [[ $(readlink /proc/$NS_PID/ns/mnt) != $(readlink /proc/self/ns/mnt) ]] && break; sleep 0.02; done
on_host mount -t tmpfs -o mode=0755 ferry-test-host "$HOST" || { echo "SKIP: cannot mount a tmpfs in a mount namespace"; exit 77; }
on_host mkdir -p "$HOST/qemu-server"
printf '#!/bin/sh\nexec nsenter -t %s -m -- qemu-system-x86_64 "$@"\n' "$NS_PID" >"$WORK/qemu-on-host"
chmod +x "$WORK/qemu-on-host"
sshd_start "$WORK/sshd" nsenter -t "$NS_PID" -m --
[[ -z $(ls -A "$HOST") ]] || fail "the host's directories are visible outside its namespace"
ok "host namespace with sshd on 127.0.0.1:$SSHD_PORT; its directories invisible to the worker"

start_host_vm() {  # VMID NAME DISK=FORMAT:SIZE...: a VM whose monitor is <vmid>.qmp, pid file <vmid>.pid (Proxmox)
  local vmid=$1 name=$2; shift 2
  local specs=() spec disk fmt size
  for spec in "$@"; do
    disk=${spec%%=*} fmt=${spec#*=} size=${fmt#*:} fmt=${fmt%%:*}
    make_data_disk "$WORK/$name-$disk.$fmt" "$fmt" "$size" "$RANDOM"
    specs+=("$disk=$WORK/$name-$disk.$fmt")
  done
  QEMU=$WORK/qemu-on-host VM_NAME=$name vm_start "$WORK/vm-$name" "${specs[@]}"
  on_host ln -sf "$WORK/vm-$name/qmp.sock" "$HOST/qemu-server/$vmid.qmp"
  on_host ln -sf "$WORK/vm-$name/qemu.pid" "$HOST/qemu-server/$vmid.pid"
}
start_host_vm 101 vm-s1 "virtio0=qcow2:$((48 * MiB))" "virtio1=raw:$((16 * MiB))"

# --- coordinator, repository, the worker ---
DATA=$WORK/coord
coord_init "$DATA"
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --heartbeat-interval-ms 500 --heartbeat-deadline-ms 4000
"$FERRY" init --repo "$WORK/repo" --chunk-size 1M >/dev/null
api POST /repositories "{\"name\": \"main\", \"location\": \"$WORK/repo\", \"task_slots\": 4}" >/dev/null
ssh_args() {  # RUNTIME-DIR: the options of a worker reaching the host over SSH (but key and known hosts)
  echo --qmp-ssh "root@127.0.0.1:$SSHD_PORT" \
    --qmp-remote-dir "$HOST/qemu-server" --host-runtime-dir "$HOST/run" --host-scratch-dir "$HOST/scratch" \
    --runtime-dir "$1" --export-listen 127.0.0.1 --inventory-interval 1s
}
CTL=$WORK/w/ssh/master.ctl
# A worker killed by a failing test leaves its master behind: ask it to go.
on_exit "ssh -o ControlPath=$CTL -O exit x >/dev/null 2>&1"
worker_token ws >"$WORK/ws.token"
# --verbose: its log then has every command it runs on the host (the PSK must not be in one).
# shellcheck disable=SC2046
worker_start s --token-file "$WORK/ws.token" --host host-s $(ssh_args "$WORK/w") --ssh-key "$SSHD_KEY" --verbose \
  --ssh-known-hosts "$SSHD_KNOWN_HOSTS"
vm_state_is() { [[ $(api GET "/vms?name=$1" | jpy "d['vms'][0]['state'] if d['vms'] else ''") == "$2" ]]; }
T0=$SECONDS
wait_for "vm-s1 in GET /vms" 30 vm_state_is vm-s1 paused
[[ -S $WORK/w/ssh/qmp/101.qmp ]] || fail "no mirrored socket $WORK/w/ssh/qmp/101.qmp"
grep -q "ssh: connected to root@127.0.0.1:$SSHD_PORT" "$WORK/worker-s.log" || fail "the worker did not log its connection"
ok "the worker lists the host's QMP directory over SSH: vm-s1 reported after $((SECONDS - T0)) s, its monitor mirrored"

# --- the PSKs of the run, as the host holds them (to look for them in the logs afterwards) ---
: >"$WORK/psks"
watch_keys() {
  while :; do
    on_host sh -c "cat '$HOST'/run/*.tls/keys.psk 2>/dev/null" >>"$WORK/psks" || true
    sleep 0.1
  done
}
watch_keys &
WATCH_PID=$!
on_exit "kill $WATCH_PID 2>/dev/null"

# --- a full run, then guest writes, a broken connection and an incremental run ---
JOB=$(api POST /jobs '{"name": "ssh", "repository": 1, "selection": {"vms": ["vm-s1"]}, "retries": {"count": 0, "interval_s": 0}}' | jpy 'd["id"]')
run_session() {  # -> $S, checked: succeeded, every disk restores bit-exact
  local disk point
  for disk in virtio0 virtio1; do snapshot_copy "$(ls "$WORK/vm-s1-$disk".*)" "$WORK/ref-$disk" "$WORK/vm-vm-s1" "$disk"; done
  S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
  wait_for "session $S to end" 180 session_ended "$S"
  api GET "/sessions/$S" >"$WORK/s$S.json"
  api GET "/sessions/$S/log" >"$WORK/log$S.json"
  [[ $(jpy 'd["state"]' <"$WORK/s$S.json") == succeeded ]] ||
    { cat "$WORK/log$S.json" >&2; tail -30 "$WORK/worker-s.log" >&2; fail "session $S: $(jpy '[d["state"], d.get("reason")]' <"$WORK/s$S.json")"; }
  "$FERRY" verify --repo "$WORK/repo" >"$WORK/verify.log" 2>&1 || fail "verify: $(cat "$WORK/verify.log")"
  point=$(jpy "d['snapshots'][0]['point_id']" <"$WORK/s$S.json")
  for disk in virtio0 virtio1; do
    rm -f "$WORK/restored"
    "$FERRY" restore --repo "$WORK/repo" --point "$point" --disk "$disk" --to "$WORK/restored" 2>/dev/null
    cmp -s "$WORK/restored" "$WORK/ref-$disk" || fail "session $S: $disk (point $point) does not restore bit-exact"
  done
  grep -q "from nbds://127.0.0.1:[0-9]*/virtio0" "$WORK/log$S.json" || fail "session $S did not read over TCP with TLS: $(cat "$WORK/log$S.json")"
}
T0=$SECONDS
run_session; S1=$S
ok "session $S1 (full, $((SECONDS - T0)) s): verified, both disks restore bit-exact, read from nbds://127.0.0.1 (TCP, TLS-PSK)"

vm_write "$WORK/vm-vm-s1" virtio0 0x5a $((3 * MiB)) $((2 * MiB))
vm_write "$WORK/vm-vm-s1" virtio1 0x5b 0 $((1 * MiB))
MASTER=$(ssh -o ControlPath="$CTL" -O check x 2>&1 | sed -n 's/.*pid=\([0-9]*\).*/\1/p')
[[ -n $MASTER ]] || fail "no ssh master at $CTL"
kill -9 "$MASTER"
T0=$SECONDS
run_session; S2=$S
grep -q "ssh: the connection to root@127.0.0.1:$SSHD_PORT ended.*reconnecting" "$WORK/worker-s.log" ||
  fail "the worker did not say it reconnected: $(tail -20 "$WORK/worker-s.log")"
"$FERRY" list --repo "$WORK/repo" --json >"$WORK/list.json"
python3 - "$WORK/list.json" "$WORK/s$S2.json" <<'PY' || fail "session $S2 was not incremental for both disks"
import json, sys
points = {p["id"]: p for p in json.load(open(sys.argv[1]))["points"]}
snap = json.load(open(sys.argv[2]))["snapshots"][0]
disks = points[snap["point_id"]]["disks"]
assert len(disks) == 2 and all(d.get("cbt", {}).get("mode") == "incremental" for d in disks), disks
PY
ok "ssh master killed, guest writes: session $S2 ($((SECONDS - T0)) s) reconnected, incremental for both disks, bit-exact"

kill "$WATCH_PID" 2>/dev/null; wait "$WATCH_PID" 2>/dev/null || true
sort -u "$WORK/psks" -o "$WORK/psks"
[[ $(wc -l <"$WORK/psks") -ge 2 ]] || fail "the host never held a session's keys file: $(cat "$WORK/psks")"
while IFS=: read -r identity key; do
  [[ $identity == ferry-* && ${#key} == 64 ]] || fail "unexpected keys file line '$identity:...'"
  for log in "$WORK"/worker-*.log "$DATA/log" "$WORK"/log*.json "$WORK/sshd/sshd.log" "$WORK/w/ssh/master.log" "$WORK"/vm-*/qemu.log; do
    grep -qF "$key" "$log" && fail "the PSK of $identity is in $log"
  done
done <"$WORK/psks"
ok "$(wc -l <"$WORK/psks") session PSKs written on the host; none in any log (worker, coordinator, session, sshd, ssh, QEMU)"

# --- the inventory follows the host ---
start_host_vm 102 vm-s2 "virtio0=raw:$((4 * MiB))"
wait_for "vm-s2 in GET /vms" 15 vm_state_is vm-s2 paused
# Its monitor busy with another client for a few scans (a monitor serves one;
# through the SSH forward a busy one closes the connection instead of staying
# silent): the VM is still there, as last seen.
seen_busy=$(grep -c "102.qmp: busy, keeping vm-s2 as last seen" "$WORK/worker-s.log" || true)
python3 - "$WORK/vm-vm-s2/qmp.sock" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.recv(4096)
time.sleep(5)
PY
holder=$!
sleep 1
for _ in 1 2 3; do vm_state_is vm-s2 paused || fail "vm-s2 left the inventory while its monitor was busy: $(api GET /vms)"; sleep 1; done
wait "$holder"
(($(grep -c "102.qmp: busy, keeping vm-s2 as last seen" "$WORK/worker-s.log") > seen_busy)) ||
  fail "no inventory scan met the busy monitor"
vm_state_is vm-s2 paused || fail "vm-s2 left the inventory: $(api GET /vms)"
# Killed (-9): its socket stays on the host, its pid file names a dead process.
kill -9 "$(vm_pid "$WORK/vm-vm-s2")"
wait_for "vm-s2 to be missing" 15 vm_state_is vm-s2 missing
on_host test -S "$WORK/vm-vm-s2/qmp.sock" || fail "the killed VM's socket is gone: the stale case was not tested"
[[ ! -e $WORK/w/ssh/qmp/102.qmp ]] || fail "the mirror kept the socket of a VM that is gone"
vm_stop "$WORK/vm-vm-s2"
ok "a VM started on the host shows up, stays while its monitor is busy, and goes missing when killed (stale socket; mirror removed)"

# --- refused key, unknown host key: clear errors, no crash ---
: >"$WORK/empty_known_hosts"
worker_token wk >"$WORK/wk.token"
worker_token wh >"$WORK/wh.token"
# shellcheck disable=SC2046
worker_start k --token-file "$WORK/wk.token" --host host-k $(ssh_args "$WORK/wk") --ssh-key "$SSHD_OTHER_KEY" \
  --ssh-known-hosts "$SSHD_KNOWN_HOSTS"
# shellcheck disable=SC2046
worker_start h --token-file "$WORK/wh.token" --host host-h $(ssh_args "$WORK/wh") --ssh-key "$SSHD_KEY" \
  --ssh-known-hosts "$WORK/empty_known_hosts"
want_k="ssh to root@127.0.0.1:$SSHD_PORT: the login was refused (key $SSHD_OTHER_KEY; is it in the host's authorized_keys?): root@127.0.0.1: Permission denied (publickey)."
want_h="ssh to root@127.0.0.1:$SSHD_PORT: its host key is unknown or changed (known hosts: $WORK/empty_known_hosts; unknown keys are never accepted): No ED25519 host key is known for [127.0.0.1]:$SSHD_PORT and you have requested strict checking. Host key verification failed."
wait_for "the refused key's error" 20 grep -qF "$want_k" "$WORK/worker-k.log"
wait_for "the unknown host key's error" 20 grep -qF "$want_h" "$WORK/worker-h.log"
sleep 2  # a few more inventory rounds
kill -0 "${WORKER_PID[k]}" && kill -0 "${WORKER_PID[h]}" || fail "a worker died of an SSH error"
[[ ! -s $WORK/empty_known_hosts ]] || fail "an unknown host key was learnt"
worker_stop k; worker_stop h
ok "a refused key and an unknown host key: clear errors naming the host, retried, workers alive"

# --- nothing left behind, in QEMU or on the host ---
[[ -z $(ferry_objects "$WORK/vm-vm-s1") ]] || fail "vm-s1's QEMU still has $(ferry_objects "$WORK/vm-vm-s1")"
left=$(on_host find "$HOST/run" "$HOST/scratch" -mindepth 1)
[[ -z $left ]] || fail "left on the host: $left"
[[ -z $(ls -A "$HOST") ]] || fail "the worker wrote into the host's directories on its own side: $(ls -A "$HOST")"
worker_stop s
grep -q "ssh: closed the connection to root@127.0.0.1:$SSHD_PORT" "$WORK/worker-s.log" || fail "the worker did not end its SSH connection"
! ssh -o ControlPath="$CTL" -O check x 2>/dev/null || fail "the ssh master outlived the worker"
ok "no snapshot left in QEMU, no file on the host; on SIGTERM the worker ends its SSH connection"
