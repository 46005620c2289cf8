#!/usr/bin/env bash
# ferry-worker benchmark (issue 11), side by side in one run:
#   - the baseline: `ferry backup` of 4 running QEMU VMs, one after another
#   - one coordinator job over the same 4 VMs on 2 ferry-worker daemons
#     (2 VMs per host, 2 slots each), full backups into a fresh repository
#   - the same job on ONE worker with 4 slots: its peak RSS (VmHWM) with 4
#     disk tasks running, for the quarter disks and for 4 full-size disks
# The data: the reference disk's 2 GiB of allocated data (bench/make-reference-
# disk.sh) cut into 4 quarter disks of 512 MiB allocated each (1 GiB virtual);
# the 4th quarter is a copy of the 1st, as in the reference disk. The full-size
# RSS run gives each of 4 VMs the whole reference disk (a qcow2 overlay each).
# Throughput = allocated bytes / wall; the job's wall is the session's
# created_at -> ended_at. The coordinator's share: its CPU seconds over the
# session's wall, and the wall time outside any disk task (snapshots,
# releases, scheduling). Both runs use fresh repositories, page cache warm.
# Usage: bench/worker-daemon.sh [WORKDIR]   (default /var/tmp/ferry-bench-worker)
# Env: BENCH_RUNS (default 3, best of).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${FERRY_BUILD_DIR:-$root/build}
FERRY=$build/bin/ferry
export FERRY_COORDINATOR=$build/coordinator/ferry-coordinator FERRY_WORKER=$build/bin/ferry-worker
work=${1:-/var/tmp/ferry-bench-worker}
runs=${BENCH_RUNS:-3}
mkdir -p "$work"
work=$(cd "$work" && pwd)
WORK=$work/tmp
rm -rf "$WORK"
mkdir -p "$WORK"
export FERRY_RUNTIME_DIR=$work/run FERRY_SCRATCH_DIR=$work/scratch
# shellcheck source=../tests/lib/vm.sh
. "$root/tests/lib/vm.sh"
_CLEANUPS=()
on_exit() { _CLEANUPS+=("$1"); }
fail() { echo "worker-daemon.sh: $*" >&2; exit 1; }
cleanup() {
    set +e
    for ((i = ${#_CLEANUPS[@]} - 1; i >= 0; i--)); do eval "${_CLEANUPS[i]}"; done
    vm_cleanup_all
}
trap cleanup EXIT
# shellcheck source=../tests/lib/coordinator.sh
. "$root/tests/lib/coordinator.sh"

GiB=$((1024 * 1024 * 1024)) MiB=$((1024 * 1024))
"$root/bench/make-reference-disk.sh" "$work/ref.qcow2" >&2
for q in 0 1 2 3; do
    [[ -f $work/q$q.qcow2 && $work/q$q.qcow2 -nt $work/ref.qcow2 ]] && continue
    qemu-img create -q -f qcow2 "$work/q$q.qcow2" 1G
    python3 - "$work/ref.qcow2" "$work/q$q.qcow2" "$q" <<'PY'
import subprocess, sys
ref, out, q = sys.argv[1], sys.argv[2], int(sys.argv[3])
half = 512 * 1024 * 1024
# [q*512M, (q+1)*512M) of ref into [0, 512M) of out, through raw windows.
subprocess.run(["qemu-img", "convert", "-q", "-S", "0", "-n",
                "--image-opts", f"driver=raw,offset={q * half},size={half},file.driver=qcow2,file.file.filename={ref}",
                "--target-image-opts", f"driver=raw,offset=0,size={half},file.driver=qcow2,file.file.filename={out}"],
               check=True)
PY
done
# q3d: a 4th quarter of distinct data (the first 512 MiB of /usr/share's
# files, sorted by path), for the layout without duplicate data across VMs.
if [[ ! -f $work/q3d.qcow2 ]]; then
    find /usr/share -type f -print0 | sort -z | xargs -0 cat 2>/dev/null | head -c $((512 * MiB)) >"$work/q3d.raw" || true
    [[ $(stat -c %s "$work/q3d.raw") == $((512 * MiB)) ]] || fail "/usr/share holds less than 512 MiB"
    qemu-img create -q -f qcow2 "$work/q3d.qcow2" 1G
    qemu-img convert -q -S 0 -n -f raw "$work/q3d.raw" --target-image-opts \
        "driver=raw,offset=0,size=$((512 * MiB)),file.driver=qcow2,file.file.filename=$work/q3d.qcow2"
    rm -f "$work/q3d.raw"
fi
allocated=$((4 * 512 * MiB))

start_vms() {  # IMAGE x 4: VMs vm0..vm3, sockets in qmp-a (vm0, vm1) and qmp-b (vm2, vm3)
    rm -rf "$WORK/qmp-a" "$WORK/qmp-b"
    mkdir -p "$WORK/qmp-a" "$WORK/qmp-b"
    local i images=("$@")
    for i in 0 1 2 3; do
        VM_NAME=vm$i vm_start "$WORK/vm$i" "virtio0=${images[$i]}"
        ln -s "$WORK/vm$i/qmp.sock" "$WORK/qmp-$([[ $i -lt 2 ]] && echo a || echo b)/10$i.qmp"
    done
}
stop_vms() { local i; for i in 0 1 2 3; do vm_stop "$WORK/vm$i"; done; }

# --- the baseline: ferry backup, one VM after another ---
cli_runs() {  # -> best wall, s
    local best= r t t0 i
    for r in $(seq "$runs"); do
        rm -rf "$WORK/repo-cli"
        "$FERRY" --quiet init --repo "$WORK/repo-cli"
        t0=$(date +%s.%N)
        for i in 0 1 2 3; do "$FERRY" --quiet backup --repo "$WORK/repo-cli" --qmp "$WORK/vm$i/qmp.sock" >/dev/null; done
        t=$(echo "$(date +%s.%N) - $t0" | bc)
        echo "cli run $r: $t s" >&2
        if [[ -z $best ]] || (($(echo "$t < $best" | bc))); then best=$t; fi
    done
    echo "$best"
}

# --- the job on 2 workers, each layout ---
DATA=$WORK/coord
coord_init "$DATA"
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0
worker_token wa >"$WORK/wa.token"
worker_token wb >"$WORK/wb.token"
worker_token wc >"$WORK/wc.token"
session_ended() { [[ $(api GET "/sessions/$1" | jpy 'd["state"]') =~ ^(succeeded|warning|failed|stopped)$ ]]; }
wait_session() {
    local deadline=$((SECONDS + 600))
    until session_ended "$1"; do ((SECONDS < deadline)) || fail "session $1 did not end"; sleep 0.2; done
    api GET "/sessions/$1" >"$WORK/s.json"
    [[ $(jpy 'd["state"]' <"$WORK/s.json") == succeeded ]] || fail "session $1: $(cat "$WORK/s.json")"
}
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # clock ticks
run_job() {  # REPO-NAME -> prints "wall_s outside_disk_s coordinator_cpu_s"
    rm -rf "$WORK/$1"
    "$FERRY" --quiet init --repo "$WORK/$1"
    local repo job s c0 c1
    repo=$(api POST /repositories "{\"name\": \"$1\", \"location\": \"$WORK/$1\", \"task_slots\": 8}" | jpy 'd["id"]')
    job=$(api POST /jobs "{\"name\": \"$1\", \"repository\": $repo, \"selection\": {\"vms\": [\"vm0\", \"vm1\", \"vm2\", \"vm3\"]}}" | jpy 'd["id"]')
    c0=$(cpu_of "$COORD_PID")
    s=$(api POST "/jobs/$job/start" | jpy 'd["session"]')
    wait_session "$s"
    c1=$(cpu_of "$COORD_PID")
    python3 - "$WORK/s.json" "$c0" "$c1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
from datetime import datetime
s = json.load(open(sys.argv[1])); c0, c1, hz = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
t = lambda x: datetime.fromisoformat(x.replace("Z", "+00:00")).timestamp()
start, end = t(s["created_at"]), t(s["ended_at"])
spans = sorted((t(k["started_at"]), t(k["ended_at"])) for k in s["tasks"])
busy, cur = 0.0, None
for a, b in spans:
    if cur and a <= cur[1]: cur[1] = max(cur[1], b)
    else:
        if cur: busy += cur[1] - cur[0]
        cur = [a, b]
if cur: busy += cur[1] - cur[0]
print(f"{end - start:.2f} {end - start - busy:.2f} {(c1 - c0) / hz:.2f}")
PY
}
wait_vms() { local deadline=$((SECONDS + 60)); until [[ $(api GET /vms | jpy "len([v for v in d['vms'] if v['state'] != 'missing'])") -ge 4 ]]; do ((SECONDS < deadline)) || fail "the workers did not report 4 VMs"; sleep 0.2; done; }

job_runs() {  # LAYOUT -> best "wall outside cpu"
    local best= line r w
    for r in $(seq "$runs"); do
        line=$(run_job "repo-$1-$r")
        echo "job run $r (wall, outside disk tasks, coordinator CPU): $line" >&2
        w=${line%% *}
        if [[ -z $best ]] || (($(echo "$w < ${best%% *}" | bc))); then best=$line; fi
    done
    echo "$best"
}
worker_start a --token-file "$WORK/wa.token" --host host-a --qmp-dir "$WORK/qmp-a" --slots 2 --runtime-dir "$WORK/run-a" --scratch-dir "$WORK/scratch-a" --inventory-interval 1s
worker_start b --token-file "$WORK/wb.token" --host host-b --qmp-dir "$WORK/qmp-b" --slots 2 --runtime-dir "$WORK/run-b" --scratch-dir "$WORK/scratch-b" --inventory-interval 1s
declare -A cli_best job_best
for layout in reference distinct; do
    if [[ $layout == reference ]]; then images=("$work/q0.qcow2" "$work/q1.qcow2" "$work/q2.qcow2" "$work/q3.qcow2")
    else images=("$work/q0.qcow2" "$work/q1.qcow2" "$work/q2.qcow2" "$work/q3d.qcow2"); fi
    echo "== layout $layout" >&2
    start_vms "${images[@]}"
    wait_vms
    cli_best[$layout]=$(cli_runs)
    job_best[$layout]=$(job_runs $layout)
    stop_vms
    # The workers see the VMs go; the next layout's VMs take their names.
    deadline=$((SECONDS + 30))
    until [[ $(api GET /vms | jpy "len([v for v in d['vms'] if v['state'] != 'missing'])") == 0 ]]; do
        ((SECONDS < deadline)) || fail "the workers still report VMs"; sleep 0.2
    done
done
worker_stop a; worker_stop b

# --- RSS: one worker, 4 slots, 4 disk tasks at once ---
rss_run() {  # NAME -> VmHWM of the worker, KiB
    worker_start "$1" --token-file "$WORK/wc.token" --host host-c --qmp-dir "$WORK/qmp-c" --slots 4 \
        --runtime-dir "$WORK/run-c" --scratch-dir "$WORK/scratch-c" --inventory-interval 1s >&2
    local deadline=$((SECONDS + 60))
    until [[ $(api GET "/vms?host=host-c" | jpy "len([v for v in d['vms'] if v['state'] != 'missing'])") -ge 4 ]]; do
        ((SECONDS < deadline)) || fail "worker $1 did not report 4 VMs"; sleep 0.2
    done
    rm -rf "$WORK/repo-rss-$1"
    "$FERRY" --quiet init --repo "$WORK/repo-rss-$1"
    local repo job s max=0
    repo=$(api POST /repositories "{\"name\": \"rss-$1\", \"location\": \"$WORK/repo-rss-$1\", \"task_slots\": 8}" | jpy 'd["id"]')
    job=$(api POST /jobs "{\"name\": \"rss-$1\", \"repository\": $repo, \"selection\": {\"hosts\": [\"host-c\"]}}" | jpy 'd["id"]')
    s=$(api POST "/jobs/$job/start" | jpy 'd["session"]')
    local concurrent=0 n
    until session_ended "$s"; do
        n=$(api GET "/sessions/$s" | jpy "len([t for t in d['tasks'] if t['state'] == 'running'])")
        ((n > concurrent)) && concurrent=$n
        sleep 0.2
    done
    wait_session "$s"
    echo "rss run $1: up to $concurrent disk tasks at once" >&2
    awk '/VmHWM/ {print $2}' "/proc/${WORKER_PID[$1]}/status"
    worker_stop "$1"
}
mkdir -p "$WORK/qmp-c"
for i in 0 1 2 3; do
    VM_NAME=vmc$i vm_start "$WORK/vmc$i" "virtio0=$work/q$i.qcow2"
    ln -s "$WORK/vmc$i/qmp.sock" "$WORK/qmp-c/30$i.qmp"
done
rss_quarter=$(rss_run quarter)
for i in 0 1 2 3; do vm_stop "$WORK/vmc$i"; done
rm -f "$WORK/qmp-c"/*
for i in 0 1 2 3; do
    rm -f "$WORK/full$i.qcow2"
    qemu-img create -q -f qcow2 -b "$work/ref.qcow2" -F qcow2 "$WORK/full$i.qcow2"
    VM_NAME=vmf$i vm_start "$WORK/vmf$i" "virtio0=$WORK/full$i.qcow2"
    ln -s "$WORK/vmf$i/qmp.sock" "$WORK/qmp-c/40$i.qmp"
done
rss_full=$(rss_run full)

python3 - "$allocated" "${cli_best[reference]}" "${job_best[reference]}" "${cli_best[distinct]}" "${job_best[distinct]}" \
    "$rss_quarter" "$rss_full" <<'PY'
import sys
alloc = float(sys.argv[1]); mib = alloc / 2**20
layouts = {"reference": (float(sys.argv[2]), [float(x) for x in sys.argv[3].split()]),
           "distinct": (float(sys.argv[4]), [float(x) for x in sys.argv[5].split()])}
rq, rf = float(sys.argv[6]), float(sys.argv[7])
print("| measure | reference quarters (4th = copy of 1st) | distinct 4th quarter |\n|---|---|---|")
row = lambda name, f: print(f"| {name} | {f('reference')} | {f('distinct')} |")
row("`ferry backup` x 4 VMs, one after another", lambda l: f"{layouts[l][0]:.2f} s = {mib / layouts[l][0]:.0f} MiB/s")
row("job over 4 VMs on 2 ferry-worker daemons", lambda l: f"{layouts[l][1][0]:.2f} s = {mib / layouts[l][1][0]:.0f} MiB/s")
row("**daemon / CLI throughput** (target >= 0.9x)", lambda l: f"**{layouts[l][0] / layouts[l][1][0]:.2f}x**")
row("session wall outside disk tasks", lambda l: f"{layouts[l][1][1]:.2f} s = {100 * layouts[l][1][1] / layouts[l][1][0]:.0f}%")
row("coordinator CPU during the session", lambda l: f"{layouts[l][1][2]:.2f} s = {100 * layouts[l][1][2] / layouts[l][1][0]:.1f}% of the wall")
print()
print("| worker peak RSS, 4 disk tasks at once | value |\n|---|---|")
print(f"| 4 x 1 GiB disks (512 MiB data each) | {rq / 1024:.0f} MiB |")
print(f"| 4 x 4 GiB disks (2 GiB data each) | {rf / 1024:.0f} MiB (target < 256 MiB) |")
for l, (cli, (job, outside, cpu)) in layouts.items():
    print(f"{l}: cli_s={cli:.2f} job_s={job:.2f} ratio={cli / job:.2f} outside_s={outside:.2f} coordinator_cpu_s={cpu:.2f}")
print(f"rss_quarter_mib={rq / 1024:.0f} rss_full_mib={rf / 1024:.0f}")
PY
