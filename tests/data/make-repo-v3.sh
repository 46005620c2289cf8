#!/usr/bin/env bash
# Writes tests/data/repo-v3: a small repository made by Ferry's repository format v3: encrypted (docs/encryption.md; key file repo-v3.key, passphrase "ferry fixture"), kept
# in git so every later version proves it still reads v2 (format_compat_test).
# Run once, by hand, when the fixture is first made; never regenerate it for a
# new format version (add repo-v4 beside it instead).
# Usage: tests/data/make-repo-v3.sh PATH-TO-FERRY
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ferry=$(realpath "$1")
work=$(mktemp -d)
export FERRY_RUNTIME_DIR=$work/run FERRY_SCRATCH_DIR=$work/scratch
. "$here/../lib/vm.sh"
trap 'vm_cleanup_all; rm -rf "$work"' EXIT

disk=$work/disk.raw
truncate -s $((1024 * 1024 + 512)) "$disk"       # 17 chunks of 64 KiB, the last one 512 bytes
printf 'ferry format v3 fixture\n%.0s' {1..2000} | dd of="$disk" conv=notrunc status=none
head -c 65536 /dev/urandom | dd of="$disk" bs=64k seek=4 conv=notrunc status=none
dd if="$disk" of="$disk" bs=64k skip=4 seek=9 count=1 conv=notrunc status=none  # duplicate chunk
printf '\xee%.0s' {1..512} | dd of="$disk" bs=512 seek=2048 conv=notrunc status=none  # last sector
VM_NAME=fixture VM_UUID=00000000-0000-4000-8000-0000000f1e70 vm_start "$work/vm" "virtio0=$disk"

rm -rf "$here/repo-v3" "$here/repo-v3.key"
export FERRY_PASSPHRASE="ferry fixture"
"$ferry" init --repo "$here/repo-v3" --chunk-size 64K --encrypt --key-file "$here/repo-v3.key"
point=$("$ferry" backup --repo "$here/repo-v3" --qmp "$work/vm/qmp.sock" --key-file "$here/repo-v3.key")
rm -f "$here"/repo-v3/staging/*.lock
{
  echo "point $point"
  echo "disk virtio0 size $(stat -c %s "$disk") sha256 $(sha256sum "$disk" | cut -d' ' -f1)"
} >"$here/repo-v3.expected"
cat "$here/repo-v3.expected"
