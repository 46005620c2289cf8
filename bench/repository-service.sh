#!/usr/bin/env bash
# Repository service benchmark (issue 12), side by side in one run:
#   - ferry backup of a running QEMU VM with the reference disk into a local
#     repository directory (the baseline), and the same into a ferry-repository
#     on loopback TCP with TLS (a fresh repository each run)
#   - ferry restore --format raw of that point from the local directory and
#     through the service, each checked bit-exact against the other and durable
#     (sync inside the timer)
#   - peak RSS of the backup process, the restore process and the service
# Throughput = the disk's allocated bytes / wall (restore: its virtual size / wall).
# Usage: bench/repository-service.sh [WORKDIR]   (default /var/tmp/ferry-bench-service)
# Env: BENCH_RUNS (default 3, best of), BENCH_SETTLE_S (default 30: see below),
#   BENCH_SPLIT_CORES=1: the worker's side (QEMU, ferry) on CPU 0 and the
#   service on CPU 1, for both the local and the service runs: a stand-in for
#   a storage host with cores of its own, which this one machine lacks.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${FERRY_BUILD_DIR:-$root/build}
ferry=$build/bin/ferry
service=$build/bin/ferry-repository
work=${1:-/var/tmp/ferry-bench-service}
runs=${BENCH_RUNS:-3}
mkdir -p "$work"
work=$(cd "$work" && pwd)
export FERRY_RUNTIME_DIR=$work/run FERRY_SCRATCH_DIR=$work/scratch
# shellcheck source=../tests/lib/vm.sh
. "$root/tests/lib/vm.sh"
svc_pid=
cleanup() { [[ -n $svc_pid ]] && kill -9 "$svc_pid" 2>/dev/null; vm_cleanup_all; }
trap cleanup EXIT

"$root/bench/make-reference-disk.sh" "$work/ref.qcow2" >&2
allocated=$(qemu-img map --output=json "$work/ref.qcow2" | python3 -c 'import json,sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))')
virtual=$(qemu-img info --output=json "$work/ref.qcow2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -days 2 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
VM_NAME=bench vm_start "$work/vm" "virtio0=$work/ref.qcow2"
worker_side=() service_side=()
if [[ ${BENCH_SPLIT_CORES:-0} == 1 ]]; then
  worker_side=(taskset -c 0) service_side=(taskset -c 1)
  taskset -a -p -c 0 "$(cat "$work/vm/qemu.pid")" >/dev/null
fi
cat "$work/ref.qcow2" >/dev/null

# Fresh repositories in new directories, all removed before the runs start and
# at the end: ext4 scans recently deleted inodes when it allocates one, so a
# repository made right after deleting another (thousands of chunk files)
# would pay for the deletion (measured: a quarter of the service's CPU).
rm -rf "$work"/runs && mkdir -p "$work/runs" && sync && sleep "${BENCH_SETTLE_S:-30}"
trap 'cleanup; rm -rf "$work/runs"' EXIT
start_service() {  # RUN: a fresh repository behind a fresh service
  [[ -n $svc_pid ]] && { kill -TERM "$svc_pid"; wait "$svc_pid" 2>/dev/null || true; }
  local store=$work/runs/store$1
  mkdir -p "$store"
  "$ferry" --quiet init --repo "$store/main" --chunk-size 1M
  "$service" grant --tokens "$store/tokens" --repository main >"$work/main.token"
  : >"$work/service.log"
  "${service_side[@]}" "$service" --listen "127.0.0.1:$port" --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" \
    --repository "main=$store/main" --tokens "$store/tokens" >>"$work/service.log" 2>&1 &
  svc_pid=$!
  for _ in $(seq 100); do grep -q serving "$work/service.log" && return; sleep 0.1; done
  echo "the service did not start: $(cat "$work/service.log")" >&2; exit 1
}
remote=(--repo "ferry+tls://127.0.0.1:$port/main" --repo-token-file "$work/main.token" --repo-ca "$work/cert.pem" --repo-server-name localhost)
timed() { /usr/bin/time -f "%e %M" "${worker_side[@]}" "$@" 2>&1 >/dev/null | tail -1; }
best() { sort -n | head -1; }

local_b=() svc_b=() local_r=() svc_r=() svc_rss=0
for ((i = 0; i < runs; i++)); do
  repo=$work/runs/repo$i
  "$ferry" --quiet init --repo "$repo" --chunk-size 1M && sync
  local_b+=("$(timed "$ferry" --quiet backup --repo "$repo" --qmp "$work/vm/qmp.sock")")
  start_service "$i"; sync
  svc_b+=("$(timed "$ferry" --quiet backup "${remote[@]}" --qmp "$work/vm/qmp.sock")")
  point=$("$ferry" list "${remote[@]}" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["points"][-1]["id"])')
  lpoint=$("$ferry" list --repo "$repo" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["points"][-1]["id"])')
  rm -f "$work/out-local.raw" "$work/out-svc.raw"; sync
  local_r+=("$(timed bash -c "\"$ferry\" --quiet restore --repo \"$repo\" --point $lpoint --disk virtio0 --to \"$work/out-local.raw\" && sync")")
  svc_r+=("$(timed bash -c "\"$ferry\" --quiet restore ${remote[*]} --point $point --disk virtio0 --to \"$work/out-svc.raw\" && sync")")
  cmp -s "$work/out-local.raw" "$work/out-svc.raw" || { echo "restores differ" >&2; exit 1; }
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$svc_pid/status")
  ((rss > svc_rss)) && svc_rss=$rss
done
pick() { printf '%s\n' "$@" | sort -n | head -1; }
read -r lb lb_rss <<<"$(pick "${local_b[@]}")"
read -r sb sb_rss <<<"$(pick "${svc_b[@]}")"
read -r lr lr_rss <<<"$(pick "${local_r[@]}")"
read -r sr sr_rss <<<"$(pick "${svc_r[@]}")"
mibs() { awk "BEGIN{printf \"%.0f\", $1 / 1048576 / $2}"; }
printf '%-34s %8s %10s %9s\n' "" "wall s" "MiB/s" "RSS MiB"
printf '%-34s %8s %10s %9s\n' "backup, local directory" "$lb" "$(mibs "$allocated" "$lb")" $((lb_rss / 1024))
printf '%-34s %8s %10s %9s\n' "backup, service (loopback TLS)" "$sb" "$(mibs "$allocated" "$sb")" $((sb_rss / 1024))
printf '%-34s %8s %10s %9s\n' "restore, local directory" "$lr" "$(mibs "$virtual" "$lr")" $((lr_rss / 1024))
printf '%-34s %8s %10s %9s\n' "restore, service (loopback TLS)" "$sr" "$(mibs "$virtual" "$sr")" $((sr_rss / 1024))
printf '%-34s %8s %10s %9s\n' "ferry-repository (peak)" "" "" $((svc_rss / 1024))
echo "backup_ratio=$(awk "BEGIN{printf \"%.2f\", $lb / $sb}")   # target >= 0.85"
echo "restore_ratio=$(awk "BEGIN{printf \"%.2f\", $lr / $sr}")  # target >= 0.85"
