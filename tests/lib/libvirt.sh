# shellcheck shell=bash
# tests/lib/libvirt.sh -- throwaway libvirt domains for Ferry's tests. Source it.
#
#   lv_ensure_daemons            use a running libvirtd, or start virtlogd and
#                                libvirtd (stopped again by lv_cleanup_all, by pid)
#   lv_define NAME DEV=PATH...   define and start (paused) a q35 domain, type
#                                'qemu' (TCG works everywhere, and nothing runs
#                                in the guest); LV_UEFI=1: UEFI firmware (OVMF)
#                                with its own NVRAM
#   lv_write NAME DEV PAT OFF LEN   write through the guest device (HMP qemu-io)
#   lv_flush NAME DEV            flush the device (before reading its image file)
#   lv_quit NAME                 stop QEMU cleanly (persistent bitmaps are stored)
#   lv_cleanup_all               destroy and undefine every domain defined here
LV_URI=${LV_URI:-qemu:///system}
declare -ga LV_DOMAINS=() LV_STARTED_PIDS=()

lv_virsh() { virsh -q -c "$LV_URI" "$@"; }

lv_ensure_daemons() {
  local pids
  pids=$("$(dirname "${BASH_SOURCE[0]}")/../../scripts/setup-libvirt") || return 1
  [[ -z $pids ]] || LV_STARTED_PIDS+=($pids)
}

# Device ids libvirt gives virtio disks: vda -> virtio-disk0, vdb -> virtio-disk1.
_lv_qdev() { local dev=$1 n; n=$(( $(printf '%d' "'${dev:2:1}") - 97 )); echo "/machine/peripheral/virtio-disk$n/virtio-backend"; }

lv_define() {
  local name=$1; shift
  local disks="" spec dev path fmt
  for spec in "$@"; do
    dev=${spec%%=*} path=$(realpath "${spec#*=}")
    fmt=$(qemu-img info -U --output=json "$path" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])')
    disks+="<disk type='file' device='disk'><driver name='qemu' type='$fmt'/><source file='$path'/><target dev='$dev' bus='virtio'/></disk>"
  done
  local xml
  xml=$(mktemp)
  cat >"$xml" <<XML
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  $( [[ ${LV_UEFI:-0} == 1 ]] && echo "<os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type></os><features><acpi/></features>" || echo "<os><type arch='x86_64' machine='q35'>hvm</type></os>" )
  <devices>$disks<interface type='user'><mac address='52:54:00:12:34:56'/><model type='virtio'/></interface><serial type='pty'/></devices>
</domain>
XML
  lv_virsh define "$xml" >/dev/null
  rm -f "$xml"
  LV_DOMAINS+=("$name")
  lv_virsh start --paused "$name" >/dev/null
}

lv_write() {
  lv_virsh qemu-monitor-command "$1" --hmp "qemu-io -d $(_lv_qdev "$2") \"write -P $3 $4 $5\"" >/dev/null
}
lv_flush() { lv_virsh qemu-monitor-command "$1" --hmp "qemu-io -d $(_lv_qdev "$2") flush" >/dev/null; }
lv_quit() {
  lv_virsh qemu-monitor-command "$1" '{"execute": "quit"}' >/dev/null 2>&1 || true
  for _ in $(seq 100); do [[ $(lv_virsh domstate "$1") == "shut off" ]] && return 0; sleep 0.1; done
  return 1
}

lv_cleanup_all() {
  local d cp
  for d in "${LV_DOMAINS[@]}"; do
    lv_virsh destroy "$d" >/dev/null 2>&1
    for cp in $(lv_virsh checkpoint-list --name "$d" 2>/dev/null); do
      lv_virsh checkpoint-delete --metadata "$d" "$cp" >/dev/null 2>&1
    done
    lv_virsh undefine --nvram "$d" >/dev/null 2>&1 || lv_virsh undefine "$d" >/dev/null 2>&1
  done
  LV_DOMAINS=()
  for p in "${LV_STARTED_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  # Wait until they are gone: a libvirtd still answering while it shuts down
  # makes the next test's setup skip starting virtlogd, and its domains fail.
  for p in "${LV_STARTED_PIDS[@]}"; do
    for _ in $(seq 100); do [[ -d /proc/$p ]] || break; sleep 0.1; done
  done
  LV_STARTED_PIDS=()
  return 0
}
