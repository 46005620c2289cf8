# shellcheck shell=bash
# Helpers for tests that boot the worker appliance (sourced after
# integration/common.sh). Everything started here is stopped by pid on exit.
#   appliance_accel                 prints the QEMU -accel to boot a real kernel with here:
#                                   tcg where KVM is nested and paravirtualised (kvm_pvm,
#                                   where a kernel crawls; ../shared/lab.md) or absent
#   appliance_boot NAME IMAGE_DIR [QEMU ARGS]
#                                   boots IMAGE_DIR's vmlinuz + initrd.img, user-mode
#                                   networking (the test machine is 10.0.2.2), serial
#                                   console in $WORK/appliance-NAME.log; APPLIANCE_PID[NAME]
#   appliance_boot_disk NAME IMAGE_DIR [QEMU ARGS]
#                                   the same from IMAGE_DIR's ferry-appliance.qcow2 (BIOS)
#   appliance_config_drive FILE DIR makes FILE a vfat volume labelled cidata holding DIR as ferry/
#   appliance_qmp_ssh_config DIR TOKEN COORDINATOR_PORT HOST QMP_DIR [CONFIG LINE...]
#                                   writes DIR as the appliance reads its configuration: the
#                                   coordinator at 10.0.2.2:PORT, TOKEN, HOST reached by QMP over
#                                   SSH to the test sshd (tests/lib/sshd.sh, started) with its
#                                   QMP sockets in QMP_DIR, host directories under QMP_DIR/..,
#                                   then the extra lines
#   appliance_fw_cfg DIR            prints the -fw_cfg options passing DIR's files as opt/ferry/*
#   appliance_powerdown NAME [S]    the power button; true once QEMU has exited within S seconds
#   appliance_stop NAME             kill -9 and wait
declare -A APPLIANCE_PID=()

appliance_accel() {
  if [[ -e /sys/module/kvm_pvm || ! -w /dev/kvm ]]; then echo tcg; else echo kvm; fi
}

appliance_boot() {
  local name=$1 image=$2; shift 2
  _appliance_qemu "$name" -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
    -append "console=ttyS0 panic=10 ${APPLIANCE_CMDLINE:-}" "$@"
}
# The same from the qcow2 (BIOS, syslinux), as platforms that attach disks boot it;
# writes go to a temporary overlay.
appliance_boot_disk() {
  local name=$1 image=$2; shift 2
  _appliance_qemu "$name" -drive "file=$image/ferry-appliance.qcow2,if=virtio,format=qcow2,snapshot=on" "$@"
}
_appliance_qemu() {
  local name=$1; shift
  local log=$WORK/appliance-$name.log
  : >"$log"
  qemu-system-x86_64 -accel "$(appliance_accel)" -m 768 -smp 1 -nographic -no-reboot -nodefaults \
    -serial "file:$log" -monitor "unix:$WORK/monitor-$name.sock,server,nowait" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0 "$@" \
    </dev/null >>"$WORK/qemu-$name.log" 2>&1 &
  APPLIANCE_PID[$name]=$!
  on_exit "kill -9 ${APPLIANCE_PID[$name]} 2>/dev/null"
}

# Presses the power button (what a hypervisor's graceful shutdown does); true
# once QEMU has exited, within SECONDS (default 60).
appliance_powerdown() {
  local name=$1 seconds=${2:-60}
  python3 - "$WORK/monitor-$name.sock" <<'PY'
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
time.sleep(0.3)
s.sendall(b"system_powerdown\n")
time.sleep(0.3)
PY
  local deadline=$((SECONDS + seconds))
  while kill -0 "${APPLIANCE_PID[$name]}" 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
  wait "${APPLIANCE_PID[$name]}" 2>/dev/null || true
}
appliance_stop() { kill -9 "${APPLIANCE_PID[$1]}" 2>/dev/null; wait "${APPLIANCE_PID[$1]}" 2>/dev/null || true; }

appliance_config_drive() {
  local file=$1 dir=$2
  rm -f "$file"
  mkfs.fat -C -n cidata "$file" 4096 >/dev/null
  MTOOLS_SKIP_CHECK=1 mmd -i "$file" ::/ferry
  MTOOLS_SKIP_CHECK=1 mcopy -i "$file" "$dir"/* ::/ferry/
}

appliance_qmp_ssh_config() {
  local dir=$1 token=$2 port=$3 host=$4 qmp_dir=$5; shift 5
  local base
  base=$(dirname "$qmp_dir")
  mkdir -p "$dir"
  echo "$token" >"$dir/token"
  cp "$SSHD_KEY" "$dir/ssh_key"
  sed "s/^\[127.0.0.1\]/[10.0.2.2]/" "$SSHD_KNOWN_HOSTS" >"$dir/known_hosts"
  {
    echo "# ferry-worker's configuration; relative paths are files beside it"
    echo "coordinator = 10.0.2.2:$port"
    echo "token-file = token"
    echo "host = $host"
    echo "qmp-ssh = root@10.0.2.2:$SSHD_PORT"
    echo "ssh-key = ssh_key"
    echo "ssh-known-hosts = known_hosts"
    echo "qmp-remote-dir = $qmp_dir"
    echo "host-runtime-dir = $base/host-run"
    echo "host-scratch-dir = $base/host-scratch"
    echo "export-listen = 127.0.0.1"
    echo "inventory-interval = 2s"
    local line
    for line in "$@"; do echo "$line"; done
  } >"$dir/config"
}
appliance_fw_cfg() { local f; for f in "$1"/*; do printf -- '-fw_cfg name=opt/ferry/%s,file=%s ' "${f##*/}" "$f"; done; }
