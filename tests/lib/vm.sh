# shellcheck shell=bash
# tests/lib/vm.sh -- bash helpers to run throwaway QEMU VMs for Ferry tests,
# quickstart and benchmarks. Source it:  . tests/lib/vm.sh
#
#   vm_start DIR ID=PATH...        start a paused q35 VM; one virtio-blk-pci device
#                                  (qdev id ID) per disk; two QMP monitors:
#                                  DIR/qmp.sock for Ferry (a QMP monitor serves one
#                                  client at a time) and DIR/qmp-test.sock for the
#                                  harness (vm_qmp, vm_hmp, vm_write, ...); with
#                                  VM_SECOND_QMP=1 a third, DIR/qmp2.sock, also for Ferry
#   vm_stop DIR                    QMP quit, SIGKILL after VM_STOP_GRACE (5) s, wait
#   vm_cleanup_all                 stop every VM started by this shell (for traps)
#   vm_qmp DIR COMMAND [JSON]      QMP command, prints the "return" value as JSON
#   vm_hmp DIR "HMP COMMAND"       human-monitor-command, prints its output
#   vm_qemu_io DIR ID "CMD"        qemu-io CMD through the device, prints its output
#   vm_write DIR ID PAT OFF LEN    write -P PAT OFF LEN through the device (guest-like)
#   vm_read_check DIR ID PAT OFF LEN   read -P PAT OFF LEN through the device
#   vm_pid DIR / vm_qmp_socket DIR / vm_qmp2_socket DIR / vm_node ID / vm_qdev_path ID
#   make_data_disk PATH FORMAT SIZE [SEED]   disk with known, varied content
#
# Environment for vm_start: VM_NAME (default ferry-demo), VM_UUID (default random),
# VM_MEM (MiB, default 256), VM_PAUSED (1 = -S, the default; 0 = let vCPUs run),
# VM_EXTRA_ARGS (extra qemu words, split on whitespace), VM_START_TIMEOUT (30 s),
# VM_SECOND_QMP (1 = a second monitor for Ferry at DIR/qmp2.sock; default 0),
# VM_STOP_GRACE (seconds vm_stop waits after QMP quit before SIGKILL, default 5),
# QEMU (binary, default qemu-system-x86_64).
#
# Block graph per disk ID: file node "ID-file" <- format node "ID-fmt" (vm_node ID)
# <- device virtio-blk-pci id=ID, whose BlockBackend is
# /machine/peripheral/ID/virtio-backend (vm_qdev_path ID); query-block shows that
# path as "qdev" with an empty "device".
#
# Facts this relies on (QEMU 7.2, checked here): HMP qemu-io through the device works
# with paused vCPUs (-S, status "prelaunch"). qemu-io's own messages ("wrote ...",
# "write failed: ...", "Pattern verification failed ...") go to QEMU's stdout, i.e.
# DIR/qemu.log, NOT into the HMP reply, so vm_qemu_io reads them back from the log.
# Do not call vm_start in a subshell ($(...)): the VM would not be tracked for
# vm_cleanup_all, and only the starting shell can reap it.

FERRY_VM_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FERRY_QMP_PY=${FERRY_QMP_PY:-$FERRY_VM_LIB_DIR/qmp.py}
# The system python starts in ~0.05 s; a pyenv shim first on PATH takes ~0.3 s.
if [[ -z ${FERRY_PYTHON:-} ]]; then
    if [[ -x /usr/bin/python3 ]]; then FERRY_PYTHON=/usr/bin/python3; else FERRY_PYTHON=python3; fi
fi
# Keep the list if this file is sourced again.
[[ -n ${FERRY_VM_DIRS+set} ]] || declare -ga FERRY_VM_DIRS=()

_vm_err() { echo "vm.sh: $*" >&2; }

# _vm_bytes SIZE -> bytes. Accepts 123, 0x1f, and K/M/G/T suffixes (binary units),
# like qemu-io's size arguments (integers only).
_vm_bytes() {
    local s=$1 m=1 n
    case $s in
        *[kK]) m=1024 ;;
        *[mM]) m=$((1024 ** 2)) ;;
        *[gG]) m=$((1024 ** 3)) ;;
        *[tT]) m=$((1024 ** 4)) ;;
    esac
    n=${s%[kKmMgGtT]}
    if [[ $n =~ ^0[xX][0-9a-fA-F]+$ && $m -eq 1 ]]; then
        echo $((n))
    elif [[ $n =~ ^[0-9]+$ ]]; then
        echo $((10#$n * m))
    else
        return 1
    fi
}

vm_qmp_socket() { echo "$1/qmp.sock"; }
# The second Ferry monitor (VM_SECOND_QMP=1): two clients of one VM at once.
vm_qmp2_socket() { echo "$1/qmp2.sock"; }
# The harness's own monitor, so tests can act while Ferry holds qmp.sock.
_vm_test_socket() { echo "$1/qmp-test.sock"; }
vm_node() { echo "$1-fmt"; }
vm_qdev_path() { echo "/machine/peripheral/$1/virtio-backend"; }

# vm_pid DIR: prints the pid of the VM's QEMU if it is alive (zombies count as dead).
vm_pid() {
    local dir=$1 pid state
    [[ -f $dir/qemu.pid ]] || return 1
    pid=$(<"$dir/qemu.pid")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/stat ]] || return 1
    state=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]] || return 1
    # Guard against pid reuse: must still be a QEMU.
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q qemu || return 1
    echo "$pid"
}

vm_qmp() {
    local dir=$1
    shift
    "$FERRY_PYTHON" "$FERRY_QMP_PY" "$(_vm_test_socket "$dir")" "$@"
}

vm_hmp() {
    "$FERRY_PYTHON" "$FERRY_QMP_PY" "$(_vm_test_socket "$1")" --hmp "$2"
}

# vm_start DIR ID=PATH...
vm_start() {
    if (($# < 1)); then
        _vm_err "usage: vm_start DIR ID=PATH..."
        return 2
    fi
    local dir=$1
    shift
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if vm_pid "$dir" >/dev/null; then
        _vm_err "a VM is already running in $dir (pid $(vm_pid "$dir"))"
        return 1
    fi
    local -a args=(
        -machine q35 -accel kvm -accel tcg
        -m "${VM_MEM:-256}" -display none -nodefaults
        -name "${VM_NAME:-ferry-demo}"
        -uuid "${VM_UUID:-$(cat /proc/sys/kernel/random/uuid)}"
        -qmp "unix:$dir/qmp.sock,server=on,wait=off"
        -qmp "unix:$dir/qmp-test.sock,server=on,wait=off"
    )
    [[ ${VM_SECOND_QMP:-0} == 1 ]] && args+=(-qmp "unix:$dir/qmp2.sock,server=on,wait=off")
    [[ ${VM_PAUSED:-1} == 1 ]] && args+=(-S)
    local spec id path fmt json
    for spec in "$@"; do
        id=${spec%%=*}
        path=${spec#*=}
        if [[ $spec != *=* || ! $id =~ ^[A-Za-z][A-Za-z0-9_.-]{0,25}$ ]]; then
            _vm_err "bad disk spec '$spec' (want ID=PATH; ID: letter then [A-Za-z0-9_.-], at most 26 chars)"
            return 2
        fi
        if [[ ! -e $path ]]; then
            _vm_err "disk $path does not exist"
            return 1
        fi
        path=$(realpath "$path")
        fmt=$(qemu-img info -U --output=json "$path" |
            "$FERRY_PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["format"])') || {
            _vm_err "qemu-img info failed on $path"
            return 1
        }
        # JSON syntax for -blockdev: no comma escaping needed in paths.
        json=$("$FERRY_PYTHON" -c '
import json, sys
i, p, f, d = sys.argv[1:5]
print(json.dumps({"driver": d, "filename": p, "node-name": i + "-file"}))
print(json.dumps({"driver": f, "file": i + "-file", "node-name": i + "-fmt"}))
' "$id" "$path" "$fmt" "$([[ -b $path ]] && echo host_device || echo file)")
        args+=(-blockdev "${json%%$'\n'*}" -blockdev "${json#*$'\n'}")
        args+=(-device "virtio-blk-pci,drive=$id-fmt,id=$id")
    done
    if [[ -n ${VM_EXTRA_ARGS:-} ]]; then
        local -a extra
        read -r -a extra <<<"$VM_EXTRA_ARGS"
        args+=("${extra[@]}")
    fi
    rm -f "$dir/qmp.sock" "$dir/qmp2.sock" "$dir/qmp-test.sock" "$dir/qemu.pid"
    {
        printf '=== %s: starting' "$(date '+%F %T')"
        printf ' %q' "${QEMU:-qemu-system-x86_64}" "${args[@]}"
        printf '\n'
    } >>"$dir/qemu.log"
    "${QEMU:-qemu-system-x86_64}" "${args[@]}" </dev/null >>"$dir/qemu.log" 2>&1 &
    local pid=$!
    echo "$pid" >"$dir/qemu.pid"
    FERRY_VM_DIRS+=("$dir")

    local deadline=$((SECONDS + ${VM_START_TIMEOUT:-30}))
    while :; do
        # Our own child, not yet reaped, so its pid cannot have been reused:
        # it exited exactly when it is no longer alive. (Its command line is
        # no test: a wrapper's, or briefly empty while it execs QEMU.)
        if ! _vm_alive "$pid"; then
            wait "$pid" 2>/dev/null || true
            _vm_err "QEMU exited during start-up; $dir/qemu.log:"
            sed 's/^/  | /' "$dir/qemu.log" >&2
            rm -f "$dir/qemu.pid"
            return 1
        fi
        if [[ -S $dir/qmp-test.sock ]] &&
            QMP_TIMEOUT=5 "$FERRY_PYTHON" "$FERRY_QMP_PY" "$dir/qmp-test.sock" query-status >/dev/null 2>&1; then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            _vm_err "QMP socket $dir/qmp-test.sock did not answer within ${VM_START_TIMEOUT:-30}s; $dir/qemu.log:"
            sed 's/^/  | /' "$dir/qemu.log" >&2
            vm_stop "$dir" || true
            return 1
        fi
        sleep 0.1
    done
}

# _vm_alive PID: the process exists and is not a zombie.
_vm_alive() {
    local state
    state=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

# _vm_wait_gone PID SECONDS: 0 once PID is gone (or a zombie), 1 on timeout.
_vm_wait_gone() {
    local pid=$1 i state
    for ((i = 0; i < $2 * 10; i++)); do
        state=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$pid/stat" 2>/dev/null) || return 0
        [[ -z $state || $state == Z || $state == X ]] && return 0
        sleep 0.1
    done
    return 1
}

# vm_stop DIR
vm_stop() {
    local dir=$1 pid d
    local -a keep=()
    [[ -d $dir ]] && dir=$(cd "$dir" && pwd)
    if pid=$(vm_pid "$dir"); then
        local grace=${VM_STOP_GRACE:-5}
        QMP_TIMEOUT=$((grace < 3 ? grace : 3)) "$FERRY_PYTHON" "$FERRY_QMP_PY" "$dir/qmp-test.sock" quit >/dev/null 2>&1 || true
        if ! _vm_wait_gone "$pid" "$grace"; then
            _vm_err "QEMU pid $pid ignored quit for $grace s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            _vm_wait_gone "$pid" 10 || _vm_err "QEMU pid $pid still alive after SIGKILL"
        fi
        # Reap it if it is our child (no-op otherwise).
        wait "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/qemu.pid"
    for d in "${FERRY_VM_DIRS[@]}"; do
        [[ $d == "$dir" ]] || keep+=("$d")
    done
    FERRY_VM_DIRS=("${keep[@]}")
    return 0
}

# vm_cleanup_all: stop every VM started by this shell. Never fails, keeps $?,
# so `trap vm_cleanup_all EXIT` (or call it from your own trap) is safe.
vm_cleanup_all() {
    local rc=$? d
    local -a dirs=("${FERRY_VM_DIRS[@]}")
    for d in "${dirs[@]}"; do
        vm_stop "$d" || true
    done
    return "$rc"
}

# vm_qemu_io DIR ID "QEMU-IO COMMAND": runs it through the device's BlockBackend,
# prints qemu-io's output (fetched from DIR/qemu.log); fails on any error text.
vm_qemu_io() {
    local dir=$1 id=$2 cmd=$3 before out rc=0 i
    if [[ $cmd == *'"'* ]]; then
        _vm_err "vm_qemu_io: command must not contain double quotes: $cmd"
        return 2
    fi
    before=$(stat -c %s "$dir/qemu.log")
    # stdout only (the HMP reply): stderr may carry xtrace output under bash -x.
    out=$(vm_hmp "$dir" "qemu-io -d $(vm_qdev_path "$id") \"$cmd\"") || rc=$?
    if ((rc != 0)) || [[ -n $out ]]; then
        # qemu-io prints nothing into the HMP reply on success; anything there is
        # an HMP-level error (unknown device, permission conflict, ...).
        _vm_err "qemu-io '$cmd' on $id failed: ${out:-exit $rc}"
        return 1
    fi
    # qemu-io flushes stdout after each command; allow a moment anyway.
    for ((i = 0; i < 20; i++)); do
        out=$(tail -c +$((before + 1)) "$dir/qemu.log")
        [[ -n $out ]] && break
        sleep 0.05
    done
    printf '%s\n' "$out"
    if [[ -z $out ]] || grep -qiE 'failed|error|invalid|not found|unknown' <<<"$out"; then
        _vm_err "qemu-io '$cmd' on $id failed: ${out:-no output from qemu-io in $dir/qemu.log}"
        return 1
    fi
}

# vm_write DIR ID PATTERN OFFSET LENGTH
vm_write() {
    if (($# != 5)); then
        _vm_err "usage: vm_write DIR DEVICE_ID PATTERN OFFSET LENGTH"
        return 2
    fi
    local dir=$1 id=$2 pat=$3 off=$4 len=$5 out boff blen
    out=$(vm_qemu_io "$dir" "$id" "write -P $pat $off $len") || {
        _vm_err "vm_write $id $pat $off $len FAILED"
        return 1
    }
    if boff=$(_vm_bytes "$off") && blen=$(_vm_bytes "$len"); then
        if ! grep -qF "wrote $blen/$blen bytes at offset $boff" <<<"$out"; then
            _vm_err "vm_write $id $pat $off $len: no confirmation in qemu-io output: $out"
            return 1
        fi
    elif ! grep -q '^wrote ' <<<"$out"; then
        _vm_err "vm_write $id $pat $off $len: no confirmation in qemu-io output: $out"
        return 1
    fi
}

# vm_read_check DIR ID PATTERN OFFSET LENGTH: fails unless every byte matches.
vm_read_check() {
    if (($# != 5)); then
        _vm_err "usage: vm_read_check DIR DEVICE_ID PATTERN OFFSET LENGTH"
        return 2
    fi
    vm_qemu_io "$1" "$2" "read -P $3 $4 $5" >/dev/null
}

# _vm_prng SEED TAG BYTES: deterministic pseudo-random bytes on stdout.
_vm_prng() {
    head -c "$3" /dev/zero |
        openssl enc -aes-128-ctr -nosalt -pbkdf2 -iter 1 -pass "pass:ferry-$1-$2" 2>/dev/null
}

# make_data_disk PATH FORMAT SIZE [SEED]
# FORMAT: qcow2 or raw. SIZE: bytes or K/M/G suffix, multiple of 512, >= 1 MiB.
# With u = SIZE/16 rounded down to 4 KiB (offsets in u):
#   [0,1)    random (stream A)          [1,2)   hole
#   [2,3)    pattern 0xaa               [3,4)   hole
#   [4,6)    random (stream B)          [6,7)   hole
#   [7,8)    repeated text lines (compressible, dedups within itself)
#   [8,9)    hole                       [9,10)  copy of [0,1) (duplicate data)
#   [10,11)  random, then written back to zeroes (qcow2: zero clusters)
#   11u+1536, 64 KiB (or u if smaller): random (stream C), sector- not chunk-aligned
#   13u, 4 KiB: pattern 0x01 amid holes
#   [SIZE-4096, SIZE): pattern 0x5a (data in the very last sector; crosses any
#                      chunk boundary when SIZE is not a multiple of the chunk)
#   everything else: holes (never written)
# The same SEED (default 1) gives the same content.
make_data_disk() {
    if (($# < 3 || $# > 4)); then
        _vm_err "usage: make_data_disk PATH FORMAT SIZE [SEED]"
        return 2
    fi
    local path=$1 fmt=$2 size seed=${4:-1} u tmp c_len
    size=$(_vm_bytes "$3") || {
        _vm_err "make_data_disk: bad size '$3'"
        return 2
    }
    if [[ $fmt != qcow2 && $fmt != raw ]]; then
        _vm_err "make_data_disk: format must be qcow2 or raw, not '$fmt'"
        return 2
    fi
    if ((size % 512 != 0 || size < 1048576)); then
        _vm_err "make_data_disk: size $size must be a multiple of 512 and >= 1 MiB"
        return 2
    fi
    u=$((size / 16 / 4096 * 4096))
    c_len=$((u < 65536 ? u : 65536))
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-mkdisk.XXXXXX")
    _vm_prng "$seed" A "$u" >"$tmp/a"
    _vm_prng "$seed" B $((2 * u)) >"$tmp/b"
    _vm_prng "$seed" C "$c_len" >"$tmp/c"
    _vm_prng "$seed" D "$u" >"$tmp/d"
    "$FERRY_PYTHON" -c '
import sys
n, seed = int(sys.argv[1]), sys.argv[2]
out, i = bytearray(), 0
while len(out) < n:
    out += b"ferry test disk seed=%s line %08d: the quick brown fox jumps over the lazy dog\n" % (seed.encode(), i % 1000)
    i += 1
sys.stdout.buffer.write(out[:n])
' "$u" "$seed" >"$tmp/t"
    rm -f "$path"
    local rc=0 out
    out=$(qemu-img create -q -f "$fmt" "$path" "$size" 2>&1 &&
        qemu-io -f "$fmt" \
            -c "write -q -s $tmp/a 0 $u" \
            -c "write -q -P 0xaa $((2 * u)) $u" \
            -c "write -q -s $tmp/b $((4 * u)) $((2 * u))" \
            -c "write -q -s $tmp/t $((7 * u)) $u" \
            -c "write -q -s $tmp/a $((9 * u)) $u" \
            -c "write -q -s $tmp/d $((10 * u)) $u" \
            -c "write -q -z $((10 * u)) $u" \
            -c "write -q -s $tmp/c $((11 * u + 1536)) $c_len" \
            -c "write -q -P 0x01 $((13 * u)) 4096" \
            -c "write -q -P 0x5a $((size - 4096)) 4096" \
            "$path" 2>&1) || rc=$?
    rm -rf "$tmp"
    if ((rc != 0)) || [[ -n $out ]]; then
        _vm_err "make_data_disk $path failed: $out"
        return 1
    fi
}
