#!/usr/bin/env bash
# Worker appliance benchmark (issue 13): the image's size, and the time from
# starting QEMU to "registered with the coordinator", under TCG (and under KVM
# when this machine's KVM runs a stock kernel at speed: not when it is nested
# and paravirtualised, /sys/module/kvm_pvm, where a kernel crawls).
# Usage: bench/appliance.sh [WORKDIR]   (default /var/tmp/ferry-bench-appliance)
# Env: BENCH_RUNS (boots per accelerator, default 3), FERRY_BUILD_DIR,
#      BENCH_ACCELS (default: tcg, plus kvm where it runs at speed).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${FERRY_BUILD_DIR:-$root/build}
WORK=${1:-/var/tmp/ferry-bench-appliance}
runs=${BENCH_RUNS:-3}
rm -rf "$WORK" && mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
cleanups=()
on_exit() { cleanups+=("$1"); }
fail() { echo "bench/appliance.sh: $*" >&2; exit 1; }
trap 'for c in "${cleanups[@]}"; do eval "$c"; done' EXIT
export FERRY_COORDINATOR=$build/coordinator/ferry-coordinator
. "$root/tests/lib/coordinator.sh"
. "$root/tests/lib/appliance.sh"

FERRY_BUILD_DIR=$build "$root/scripts/build-image" "$WORK/image" 2>"$WORK/build.log" || { tail "$WORK/build.log"; exit 1; }
mib() { awk "BEGIN{printf \"%.1f\", $(stat -c %s "$1") / 1048576}"; }
echo "image $(sed -n 's/^# Ferry worker appliance //p' "$WORK/image/manifest.txt"):"
echo "  vmlinuz $(mib "$WORK/image/vmlinuz") MiB, initrd.img $(mib "$WORK/image/initrd.img") MiB," \
  "ferry-appliance.qcow2 $(mib "$WORK/image/ferry-appliance.qcow2") MiB (target <= 64)"

DATA=$WORK/coord
coord_init "$DATA" >/dev/null
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --heartbeat-interval-ms 1000
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
