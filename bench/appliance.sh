#!/usr/bin/env bash
# Worker appliance benchmark (issue 13), in one run:
#   - the image's size;
#   - the time from starting QEMU to "registered with the coordinator", under
#     TCG (and under KVM when this machine's KVM runs a stock kernel at speed:
#     not when it is nested and paravirtualised, /sys/module/kvm_pvm, where a
#     kernel crawls);
#   - a full backup of the reference disk (bench/make-reference-disk.sh, 2 GiB
#     allocated) of a running QEMU VM by a coordinator job, once through the
#     appliance (booted under QEMU with user-mode networking, 1 vCPU as the
#     coordinator deploys it: QMP over SSH to a test sshd, the snapshot over
#     NBD/TCP with TLS, chunks to the coordinator's repository service) and
#     once by the same ferry-worker as a process on the host (QMP and NBD over
#     unix sockets, the same repository service over loopback); each into a
#     fresh repository. Wall = the session's created_at -> ended_at. Under TCG
#     the ratio is informational: the appliance's hashing and compression run
#     emulated.
# Usage: bench/appliance.sh [WORKDIR]   (default /var/tmp/ferry-bench-appliance)
# Env: BENCH_RUNS (boots per accelerator, default 3), FERRY_BUILD_DIR,
#      BENCH_ACCELS (default: tcg, plus kvm where it runs at speed),
#      BENCH_DISK (the disk to back up, default the reference disk in WORKDIR;
#      "none" skips the backups).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${FERRY_BUILD_DIR:-$root/build}
work=${1:-/var/tmp/ferry-bench-appliance}
runs=${BENCH_RUNS:-3}
mkdir -p "$work"
work=$(cd "$work" && pwd)
WORK=$work/tmp
rm -rf "$WORK" && mkdir -p "$WORK"
cleanups=()
on_exit() { cleanups+=("$1"); }
fail() { echo "bench/appliance.sh: $*" >&2; exit 1; }
trap 'set +e; for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do eval "${cleanups[i]}"; done; vm_cleanup_all' EXIT
export FERRY_COORDINATOR=$build/coordinator/ferry-coordinator FERRY_WORKER=$build/bin/ferry-worker
FERRY=$build/bin/ferry
export FERRY_RUNTIME_DIR=$WORK/run FERRY_SCRATCH_DIR=$WORK/scratch
. "$root/tests/lib/vm.sh"
. "$root/tests/lib/coordinator.sh"
. "$root/tests/lib/appliance.sh"
. "$root/tests/lib/sshd.sh"

FERRY_BUILD_DIR=$build "$root/scripts/build-image" "$WORK/image" 2>"$WORK/build.log" || { tail "$WORK/build.log"; exit 1; }
mib() { awk "BEGIN{printf \"%.1f\", $(stat -c %s "$1") / 1048576}"; }
echo "image $(sed -n 's/^# Ferry worker appliance //p' "$WORK/image/manifest.txt"):"
echo "  vmlinuz $(mib "$WORK/image/vmlinuz") MiB, initrd.img $(mib "$WORK/image/initrd.img") MiB," \
  "ferry-appliance.qcow2 $(mib "$WORK/image/ferry-appliance.qcow2") MiB (target <= 64)"

DATA=$WORK/coord
coord_init "$DATA" >/dev/null
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --heartbeat-interval-ms 1000 \
  --repository-advertise 10.0.2.2
accels=${BENCH_ACCELS:-tcg}
if [[ -z ${BENCH_ACCELS:-} && -w /dev/kvm && ! -e /sys/module/kvm_pvm ]]; then accels="tcg kvm"; fi
registered() { [[ $(api GET /workers | jpy "[w['state'] for w in d['workers'] if w['name'] == '$1'][0]") == connected ]]; }
for accel in $accels; do
  times=()
  for ((i = 0; i < runs; i++)); do
    name=$accel-$i
    mkdir -p "$WORK/cfg-$name"
    worker_token "$name" >"$WORK/cfg-$name/token"
    printf 'coordinator = 10.0.2.2:%s\ntoken-file = token\nhost = bench-%s\nqmp-dir = /var/empty\n' "${RPC##*:}" "$name" \
      >"$WORK/cfg-$name/config"
    start=$(date +%s.%N)
    appliance_accel() { echo "$accel"; }
    appliance_boot "$name" "$WORK/image" -fw_cfg "name=opt/ferry/config,file=$WORK/cfg-$name/config" \
      -fw_cfg "name=opt/ferry/token,file=$WORK/cfg-$name/token"
    until registered "$name" 2>/dev/null; do
      sleep 0.1
      (($(date +%s) - ${start%.*} < 300)) || fail "$name did not register in 300 s: $(tail -3 "$WORK/appliance-$name.log")"
    done
    times+=("$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $start}")")
    appliance_stop "$name"
  done
  echo "boot to registered, $accel: $(printf '%s s ' "${times[@]}")(best $(printf '%s\n' "${times[@]}" | sort -n | head -1) s; target <= 30 s under TCG)"
done

# --- a full backup of the reference disk: through the appliance, then by a host process ---
disk=${BENCH_DISK:-$work/ref.qcow2}
[[ $disk == none ]] && exit 0
[[ -n ${BENCH_DISK:-} ]] || "$root/bench/make-reference-disk.sh" "$disk" >&2
allocated=$(qemu-img map --output=json "$disk" | python3 -c 'import json,sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))')
chmod 755 "$work" "$WORK"
qemu-img create -q -f qcow2 -b "$disk" -F qcow2 "$WORK/bench-virtio0.qcow2"
VM_NAME=bench-ref vm_start "$WORK/vm" "virtio0=$WORK/bench-virtio0.qcow2"
mkdir -p "$WORK/qemu-server"
ln -sf "$WORK/vm/qmp.sock" "$WORK/qemu-server/101.qmp"
ln -sf "$WORK/vm/qemu.pid" "$WORK/qemu-server/101.pid"
sshd_start "$WORK/sshd"
cat "$disk" >/dev/null  # page cache warm for both runs
# backup_wall NAME: a job over bench-ref into a fresh repository NAME; prints the session's wall in seconds.
backup_wall() {
  "$FERRY" init --repo "$WORK/repo-$1" --chunk-size 1M >/dev/null
  local repo job s
  repo=$(api POST /repositories "{\"name\": \"$1\", \"location\": \"$WORK/repo-$1\"}" | jpy 'd["id"]')
  job=$(api POST /jobs "{\"name\": \"$1\", \"repository\": $repo, \"selection\": {\"vms\": [\"bench-ref\"]}, \"retries\": {\"count\": 0, \"interval_s\": 0}}" | jpy 'd["id"]')
  s=$(api POST "/jobs/$job/start" | jpy 'd["session"]')
  local deadline=$((SECONDS + 3600))
  until session_ended "$s"; do ((SECONDS < deadline)) || fail "session $s ($1) did not end in an hour"; sleep 0.5; done
  api GET "/sessions/$s" >"$WORK/session-$1.json"
  [[ $(jpy 'd["state"]' <"$WORK/session-$1.json") == succeeded ]] || fail "session $s ($1): $(cat "$WORK/session-$1.json")"
  python3 - "$WORK/session-$1.json" <<'PY'
import json, sys
from datetime import datetime
d = json.load(open(sys.argv[1]))
t = lambda v: datetime.fromisoformat(v.replace("Z", "+00:00"))
print(f"{(t(d['ended_at']) - t(d['created_at'])).total_seconds():.1f}")
PY
}
vm_seen_by() {
  [[ $(api GET "/vms?name=bench-ref" | jpy "d['vms'][0]['host'] if d['vms'] else ''") == "$1" ]]
}
# The appliance: its configuration on fw_cfg, as in tests/integration/test-appliance.sh.
cfg=$WORK/cfg-backup
appliance_qmp_ssh_config "$cfg" "$(worker_token appliance-bench)" "${RPC##*:}" bench-appliance "$WORK/qemu-server"
accel=$(appliance_accel)
appliance_accel() { echo "$accel"; }
# shellcheck disable=SC2046
appliance_boot backup "$WORK/image" $(appliance_fw_cfg "$cfg")
wait_seen() {
  local deadline=$((SECONDS + 300))
  until vm_seen_by "$1" 2>/dev/null; do ((SECONDS < deadline)) || fail "bench-ref never seen on host $1"; sleep 0.5; done
}
wait_seen bench-appliance
through_appliance=$(backup_wall appliance)
appliance_powerdown backup 60 || appliance_stop backup
# The same worker as a host process, with a coordinator of its own that
# advertises its repository service on loopback (the first one tells workers
# 10.0.2.2, the appliance's name for this machine).
kill "$COORD_PID"; wait "$COORD_PID" 2>/dev/null || true
coord_init "$WORK/coord-host" >/dev/null
coord_start "$WORK/coord-host" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --heartbeat-interval-ms 1000
FERRY_WORKER_TOKEN=$(worker_token host-bench) worker_start host --host bench-host --qmp-dir "$WORK/qemu-server" --inventory-interval 2s
wait_seen bench-host
as_host_process=$(backup_wall host)
kill "${WORKER_PID[host]}" 2>/dev/null; wait "${WORKER_PID[host]}" 2>/dev/null || true
mibs() { awk "BEGIN{printf \"%.0f\", $allocated / 1048576 / $1}"; }
echo "full backup of $(basename "$disk") ($((allocated / 1048576)) MiB allocated), one job each, fresh repositories:"
echo "  through the appliance ($accel, 1 vCPU; QMP over SSH, NBD/TLS over TCP): ${through_appliance} s, $(mibs "$through_appliance") MiB/s"
echo "  the same ferry-worker as a host process (unix sockets):      ${as_host_process} s, $(mibs "$as_host_process") MiB/s"
echo "  ratio appliance / host process: $(awk "BEGIN{printf \"%.2f\", $through_appliance / $as_host_process}")x (informational under TCG)"
