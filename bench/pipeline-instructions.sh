#!/usr/bin/env bash
# The backup pipeline's CPU cost, old build against new, counted in
# instructions by callgrind (repeatable whatever else the machine runs):
# one full backup of a 256 MiB test disk from a running QEMU VM, one compute
# thread, each binary into its own repository.
# Usage: bench/pipeline-instructions.sh OLD_FERRY [NEW_FERRY] [WORKDIR]
# A ferry with a ferry-host beside it is measured as that ferry-host: ferry
# only execs it, and callgrind does not follow the exec.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
host_of() { local d; d=$(dirname "$1"); if [[ -x $d/ferry-host ]]; then echo "$d/ferry-host"; else echo "$1"; fi; }
old=$(host_of "$(realpath "${1:?usage: $0 OLD_FERRY [NEW_FERRY] [WORKDIR]}")")
new=$(host_of "$(realpath "${2:-$root/build/bin/ferry}")")
work=${3:-/var/tmp/ferry-bench-instructions}
rm -rf "$work"; mkdir -p "$work"
export FERRY_RUNTIME_DIR=$work/run FERRY_SCRATCH_DIR=$work/scratch
. "$root/tests/lib/vm.sh"
trap 'vm_cleanup_all; rm -rf "$work"' EXIT
make_data_disk "$work/d.qcow2" qcow2 256M
VM_NAME=bench vm_start "$work/vm" "virtio0=$work/d.qcow2"
for v in old new; do
  bin=$old; [[ $v == new ]] && bin=$new
  "$bin" --quiet init --repo "$work/repo-$v"
  valgrind --tool=callgrind --callgrind-out-file="$work/cg-$v.out" \
    "$bin" --quiet backup --repo "$work/repo-$v" --qmp "$work/vm/qmp.sock" --threads 1 >/dev/null 2>"$work/vg-$v.log"
  echo "${v}_instructions=$(sed -n 's/.*Collected : //p' "$work/vg-$v.log")"
done
