#!/usr/bin/env bash
# `ferry` and `ferry-host` (docs/cli.md, "Two binaries"): the admin tool links
# no hypervisor library and the host binary does; ferry execs ferry-host for
# the host commands (same pid, same exit codes and output), finds it through
# symlinks, and says clearly when it is missing. Needs no VM.
set -euo pipefail
FERRY=$(realpath "${1:?usage: test-ferry-split.sh FERRY FERRY-HOST}")
HOST=$(realpath "${2:?usage: test-ferry-split.sh FERRY FERRY-HOST}")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-split-XXXXXX")
trap 'rc=$?; exec 3>&- 2>/dev/null; rm -rf "$WORK"; ((rc == 0)) && echo "PASS: $(basename "$0")" || echo "FAIL: $(basename "$0")"; exit $rc' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

# Linkage: the whole closure for ferry (ldd), the direct needs for ferry-host.
hypervisor='lib(virt|nbd)\.so'
if ldd "$FERRY" | grep -E "$hypervisor"; then fail "ferry links a hypervisor library (above)"; fi
ok "ferry links neither libvirt nor libnbd"
needed=$(readelf -d "$HOST" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
for lib in libvirt libnbd; do
  grep -q "^$lib\.so" <<<"$needed" || fail "ferry-host does not link $lib (NEEDED: $(echo $needed))"
done
ok "ferry-host links libvirt and libnbd"

# --help shows every command without running ferry-host.
help=$("$FERRY" --help)
for c in init backup list restore restore-vm verify prune remove lock inventory stage backup-disk commit discard \
  "job create" "restore disk" "session watch"; do
  grep -qE "^  $c( |$)" <<<"$help" || fail "ferry --help does not show '$c'"
done
ok "ferry --help lists every command"

# Host commands: the same exit code and stderr as ferry-host itself, global options passed on.
rc=0; err=$("$FERRY" --quiet list --repo "$WORK/missing" 2>&1) || rc=$?
hrc=0; herr=$("$HOST" --quiet list --repo "$WORK/missing" 2>&1) || hrc=$?
[[ $rc -eq 3 && $hrc -eq 3 ]] || fail "list of a missing repository: ferry exited $rc, ferry-host $hrc (expected 3)"
[[ $err == "$herr" && $err == "ferry list: error: "* ]] || fail "ferry said '$err', ferry-host '$herr'"
ok "ferry list -> exit $rc: $err"
rc=0; err=$("$FERRY" init --repo "$WORK/r" --chunk-size=4X 2>&1) || rc=$?
[[ $rc -eq 2 && $err == *"option --chunk-size: '4X' is not a size"* ]] || fail "init --chunk-size=4X: exit $rc: $err"
"$FERRY" --verbose init --repo "$WORK/repo" >/dev/null 2>&1 || fail "ferry init failed"
[[ -f $WORK/repo/ferry-repository.json ]] || fail "ferry init made no repository"
ok "ferry init runs in ferry-host"

# exec, not fork: the process ferry started is ferry-host, under the same pid.
mkfifo "$WORK/in"
"$FERRY" _guardian --qmp "$WORK/none.sock" --session s --vm-key k --runtime-dir "$WORK" --scratch-dir "$WORK" \
  <"$WORK/in" &
pid=$!
exec 3>"$WORK/in"
for _ in $(seq 100); do [[ $(readlink "/proc/$pid/exe" || true) == "$HOST" ]] && break; sleep 0.05; done
[[ $(readlink "/proc/$pid/exe" || true) == "$HOST" ]] || fail "pid $pid runs $(readlink "/proc/$pid/exe"), not $HOST"
echo done >&3
exec 3>&-
wait "$pid" || fail "the guardian exited $? after 'done'"
ok "ferry _guardian is ferry-host in the same process ($pid)"

# A symlink to ferry finds the real installation's ferry-host.
mkdir "$WORK/link" && ln -s "$FERRY" "$WORK/link/ferry"
rc=0; "$WORK/link/ferry" list --repo "$WORK/missing" 2>/dev/null || rc=$?
[[ $rc -eq 3 ]] || fail "ferry through a symlink exited $rc, expected 3"
ok "ferry through a symlink"

# Without ferry-host: a clear error (environment, exit 5); the admin side still works.
mkdir "$WORK/bin" && cp "$FERRY" "$WORK/bin/ferry"
rc=0; err=$("$WORK/bin/ferry" backup --repo "$WORK/repo" 2>&1) || rc=$?
want="ferry backup: error: this installation has no host commands (ferry-host not found in $WORK/bin); install Ferry's worker package"
[[ $rc -eq 5 && $err == "$want" ]] || fail "without ferry-host: exit $rc: '$err'"
ok "without ferry-host -> exit $rc: $err"
[[ $("$WORK/bin/ferry" --help) == *restore-vm* ]] || fail "ferry --help without ferry-host"
rc=0; err=$(env -u FERRY_TOKEN "$WORK/bin/ferry" --coordinator http://127.0.0.1:1 status 2>&1) || rc=$?
[[ $rc -eq 2 && $err == *"no API token"* ]] || fail "--coordinator without ferry-host: exit $rc: $err"
ok "the coordinator commands need no ferry-host"

rc=0; err=$("$FERRY" frobnicate 2>&1) || rc=$?
[[ $rc -eq 2 && $err == "ferry: error: unknown command 'frobnicate'"* ]] || fail "unknown command: exit $rc: $err"
ok "unknown command -> exit 2"
