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
