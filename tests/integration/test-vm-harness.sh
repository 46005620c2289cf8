#!/usr/bin/env bash
# Self-test of tests/lib/vm.sh and tests/lib/qmp.py.
# Usage: tests/integration/test-vm-harness.sh
# Starts paused QEMU VMs (qcow2 + raw disk), writes through the devices with HMP
# qemu-io, stops them, and checks the data with qemu-io/qemu-img directly.
# Prints PASS/FAIL lines; exits non-zero on any failure. Takes about 10 s.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=../lib/vm.sh
. "$here/../lib/vm.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-test-vm-harness.XXXXXX")
cleanup() {
    local rc=$?
    vm_cleanup_all || true
    # Any QEMU we SIGSTOPped and lost track of: by pid only.
    if [[ -n ${stopped_pid:-} ]]; then kill -KILL "$stopped_pid" 2>/dev/null || true; fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

failures=0
pass() { echo "PASS: $*"; }
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}
# check DESCRIPTION CMD...: PASS if CMD succeeds.
check() {
    local what=$1
    shift
    if "$@" >"$work/last.out" 2>&1; then pass "$what"; else
        fail "$what"
        sed 's/^/    /' "$work/last.out"
    fi
}
# check_fails DESCRIPTION CMD...: PASS if CMD fails.
check_fails() {
    local what=$1
    shift
    if "$@" >"$work/last.out" 2>&1; then
        fail "$what (unexpectedly succeeded)"
        sed 's/^/    /' "$work/last.out"
    else pass "$what"; fi
}

size=$((64 * 1024 * 1024 + 512)) # partial last chunk for any chunk size >= 1 KiB
last=$((size - 512))

check "make_data_disk qcow2" make_data_disk "$work/d0.qcow2" qcow2 "$size" 1
check "make_data_disk raw" make_data_disk "$work/d1.raw" raw "$size" 2
check "data disk has data in the last sector" \
    qemu-io -f raw -c "read -P 0x5a $last 512" "$work/d1.raw"
check "same seed gives the same content (qcow2 vs raw)" bash -c "
    . '$here/../lib/vm.sh'
    make_data_disk '$work/d0-again.raw' raw $size 1
    qemu-img compare -q '$work/d0.qcow2' '$work/d0-again.raw'"
cp --sparse=always "$work/d0.qcow2" "$work/d0.orig.qcow2"
cp --sparse=always "$work/d1.raw" "$work/d1.orig.raw"

vm=$work/vm
if ! VM_NAME=ferry-harness-test vm_start "$vm" disk0="$work/d0.qcow2" disk1="$work/d1.raw"; then
    fail "vm_start"
    exit 1
fi
pid=$(vm_pid "$vm")
pass "vm_start (pid $pid)"

# out_has CMD... -- STRING...: run CMD, require every STRING in its output.
out_has() {
    local -a cmd=()
    while [[ $1 != -- ]]; do cmd+=("$1"); shift; done
    shift
    local out s
    out=$("${cmd[@]}") || return 1
    for s in "$@"; do
        grep -qF -- "$s" <<<"$out" || { echo "missing '$s' in: $out"; return 1; }
    done
}
check "QMP query-status answers (prelaunch, paused)" \
    out_has vm_qmp "$vm" query-status -- '"status": "prelaunch"'
check "query-name is ferry-harness-test" \
    out_has vm_qmp "$vm" query-name -- ferry-harness-test
check "query-block shows both qdev paths and node names" \
    out_has vm_qmp "$vm" query-block -- \
    /machine/peripheral/disk0/virtio-backend /machine/peripheral/disk1/virtio-backend \
    '"node-name": "disk0-fmt"' '"node-name": "disk1-fmt"' '"drv": "qcow2"' '"drv": "raw"'
check "HMP info block lists disk1" out_has vm_hmp "$vm" "info block" -- disk1-fmt
check "qmp.py with JSON args (query-named-block-nodes flat)" \
    vm_qmp "$vm" query-named-block-nodes '{"flat": true}'
check_fails "qmp.py exits non-zero on a QMP error" vm_qmp "$vm" no-such-command
check_fails "qmp.py --hmp exits non-zero on an HMP error" vm_hmp "$vm" "no-such-hmp-command"

check "vm_write disk0 0xcd 2M 64k" vm_write "$vm" disk0 0xcd 2M 64k
check "vm_write disk1 0xcd into the partial last chunk" vm_write "$vm" disk1 0xcd $((64 * 1024 * 1024)) 512
check "vm_read_check disk0 reads 0xcd back through the device" vm_read_check "$vm" disk0 0xcd 2M 64k
check_fails "vm_read_check detects a wrong pattern" vm_read_check "$vm" disk0 0xce 2M 64k
check_fails "vm_write beyond the end of the disk fails" vm_write "$vm" disk0 0xcd $size 512
check_fails "vm_write to an unknown device fails" vm_write "$vm" nosuchdisk 0xcd 0 512

vm_stop "$vm"
if [[ -d /proc/$pid ]] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then
    fail "vm_stop: pid $pid still alive"
else pass "vm_stop: pid $pid gone"; fi
if [[ ! -e $vm/qemu.pid ]]; then pass "vm_stop removed qemu.pid"; else fail "vm_stop left qemu.pid"; fi

check "qcow2: pattern landed (qemu-io read -P offline)" \
    qemu-io -f qcow2 -c "read -P 0xcd 2M 64k" "$work/d0.qcow2"
check "raw: pattern landed in the last sector (qemu-io read -P offline)" \
    qemu-io -f raw -c "read -P 0xcd $((64 * 1024 * 1024)) 512" "$work/d1.raw"
check_fails "qcow2 differs from the original" qemu-img compare -q "$work/d0.qcow2" "$work/d0.orig.qcow2"
# Second means: apply the same writes offline to the originals; all else must match.
qemu-io -f qcow2 -c "write -q -P 0xcd 2M 64k" "$work/d0.orig.qcow2"
qemu-io -f raw -c "write -q -P 0xcd $((64 * 1024 * 1024)) 512" "$work/d1.orig.raw"
check "qcow2 matches original + same write (qemu-img compare)" \
    qemu-img compare "$work/d0.qcow2" "$work/d0.orig.qcow2"
check "raw matches original + same write (qemu-img compare)" \
    qemu-img compare "$work/d1.raw" "$work/d1.orig.raw"
check "qcow2 image is consistent" qemu-img check -q "$work/d0.qcow2"

# vm_cleanup_all stops everything, including a QEMU that ignores quit (SIGSTOPped).
if ! vm_start "$work/vmA" disk0="$work/d0.qcow2" || ! vm_start "$work/vmB" disk1="$work/d1.raw"; then
    fail "vm_start of two VMs"
    exit 1
fi
pa=$(vm_pid "$work/vmA")
pb=$(vm_pid "$work/vmB")
stopped_pid=$pb
kill -STOP "$pb"
t0=$SECONDS
VM_STOP_GRACE=1 vm_cleanup_all 2>"$work/cleanup.err" || true
alive=
for p in "$pa" "$pb"; do
    if [[ -d /proc/$p ]] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null; then alive+=" $p"; fi
done
if [[ -z $alive && ${#FERRY_VM_DIRS[@]} -eq 0 ]]; then
    pass "vm_cleanup_all stopped 2 VMs, one via SIGKILL ($((SECONDS - t0)) s)"
    stopped_pid=
else
    fail "vm_cleanup_all left pids:$alive, dirs: ${FERRY_VM_DIRS[*]}"
    cat "$work/cleanup.err"
fi

# A VM that cannot start reports the QEMU log.
if VM_EXTRA_ARGS="-no-such-qemu-option" vm_start "$work/vmbad" disk0="$work/d0.qcow2" 2>"$work/bad.err"; then
    fail "vm_start with a bad option succeeded"
else
    if grep -q "no-such-qemu-option" "$work/bad.err"; then
        pass "vm_start failure shows the QEMU log"
    else
        fail "vm_start failure did not show the QEMU log"
        cat "$work/bad.err"
    fi
fi

if ((failures)); then
    echo "test-vm-harness: $failures FAILED"
    exit 1
fi
echo "test-vm-harness: all passed"
