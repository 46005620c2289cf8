#!/usr/bin/env bash
# The Debian packages from an already built tree (scripts/package, no build):
# the four packages and their dependencies, unpacked with dpkg -x into a
# scratch root (never installed here); the unpacked binaries run (ferry
# finds its ferry-host; the daemons read the shipped configuration files);
# ferry-coordinator from the package tells a stand-in service manager READY=1
# and STOPPING=1 over $NOTIFY_SOCKET; the coordinator's user and state
# directory are made as its postinst makes them (systemd-sysusers,
# systemd-tmpfiles, --root); systemd-analyze verify finds nothing in the units;
# the packaged coordinator serves the packaged web console.
#   test-package.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src=$1
build=$2
tmp=$(mktemp -d /tmp/ferry-package-test.XXXXXX)
coordinator_pid=
cleanup() {
  [ -n "$coordinator_pid" ] && kill "$coordinator_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

FERRY_BUILD_DIR=$build FERRY_PACKAGE_NO_BUILD=1 "$src/scripts/package" "$tmp/debs"

root=$tmp/root
for p in ferry ferry-coordinator ferry-worker ferry-repository; do
  deb=$(ls "$tmp"/debs/"${p}"_*.deb 2>/dev/null | head -n1)
  [ -n "$deb" ] || fail "no package $p in $(ls "$tmp/debs")"
  depends=$(dpkg-deb -f "$deb" Depends)
  echo "$p: Depends: $depends"
  # dpkg-shlibdeps found the C library at least.
  grep -q 'libc6' <<<"$depends" || fail "$p: no shared-library dependencies (dpkg-shlibdeps): '$depends'"
  dpkg-deb -c "$deb" | awk '{print $NF}' | sed "s|^\./|/|" | grep -v '/$' | sed "s|^|  $p: |"
  dpkg -x "$deb" "$root"
done
deb_of() { ls "$tmp"/debs/"$1"_*.deb; }
grep -q 'libvirt0' <<<"$(dpkg-deb -f "$(deb_of ferry-worker)" Depends)" || fail "ferry-worker does not depend on libvirt0"
grep -q 'libsqlite3' <<<"$(dpkg-deb -f "$(deb_of ferry-coordinator)" Depends)" || fail "ferry-coordinator does not depend on libsqlite3"
# The command links neither libvirt nor libnbd (cli/main.cc); ferry-host, in the same package, does.
for c in coordinator worker repository; do
  # Captured first: grep -q ending a pipeline early would fail it (pipefail).
  conffiles=$(dpkg-deb --ctrl-tarfile "$(deb_of ferry-$c)" | tar -xO ./conffiles)
  grep -qx "/etc/ferry/$c.conf" <<<"$conffiles" || fail "ferry-$c: /etc/ferry/$c.conf is not a conffile"
  control=$(dpkg-deb --ctrl-tarfile "$(deb_of ferry-$c)" | tar -t)
  grep -qx './postinst' <<<"$control" || fail "ferry-$c: no postinst"
  [ -f "$root/etc/ferry/$c.conf" ] || fail "ferry-$c: no /etc/ferry/$c.conf"
  [ -f "$root/usr/lib/systemd/system/ferry-$c.service" ] || fail "ferry-$c: no unit"
  [ -f "$root/usr/share/doc/ferry-$c/packaging.md" ] || fail "ferry-$c: no docs"
done
[ -f "$root/usr/lib/sysusers.d/ferry-coordinator.conf" ] || fail "no sysusers.d file for user ferry"
# Each package's man page and bash completion (generated from the program's definitions).
for entry in ferry:1 ferry-coordinator:8 ferry-worker:8 ferry-repository:8; do
  p=${entry%:*} section=${entry#*:}
  page=$root/usr/share/man/man$section/$p.$section.gz
  [ -s "$page" ] || fail "$p: no man page in man$section"
  zcat "$page" | grep -q "^\.TH $(tr a-z A-Z <<<"$p") $section " || fail "$p: $page is no man page"
  [ -s "$root/usr/share/bash-completion/completions/$p" ] || fail "$p: no bash completion"
  bash -n "$root/usr/share/bash-completion/completions/$p" || fail "$p: its bash completion is not valid bash"
done

# ferry: usage, exit 2; the host commands through the ferry-host beside it.
bin=$root/usr/bin
set +e
"$bin/ferry" >"$tmp/out" 2>&1; rc=$?
set -e
[ "$rc" = 2 ] || fail "ferry with no arguments: exit $rc, not 2"
grep -q '^usage: ferry COMMAND' "$tmp/out" || fail "ferry with no arguments printed no usage: $(cat "$tmp/out")"
set +e
"$bin/ferry" list --repo "$tmp/no-such-repo" >"$tmp/out" 2>&1; rc=$?
set -e
grep -q 'no host commands\|cannot find ferry-host' "$tmp/out" && fail "the installed ferry did not find ferry-host: $(cat "$tmp/out")"
grep -q 'no-such-repo' "$tmp/out" || fail "ferry list on a missing repository (exit $rc): $(cat "$tmp/out")"
# Each program says the version its package carries.
version=$(dpkg-deb -f "$(deb_of ferry)" Version)
for d in ferry ferry-coordinator ferry-worker ferry-repository; do
  out=$("$bin/$d" --version) || fail "$d --version failed"
  [ "$out" = "$d ${version%-*}" ] || fail "$d --version: '$out', the package is $version"
done
for d in ferry-coordinator ferry-worker ferry-repository; do
  "$bin/$d" --help >"$tmp/out" || fail "$d --help failed"
  grep -q "^usage: $d" "$tmp/out" || fail "$d --help printed no usage"
done

# The shipped configuration files parse: the worker's needs its coordinator
# (commented out), and says so; the repository's needs a TLS certificate.
set +e
"$bin/ferry-worker" --config "$root/etc/ferry/worker.conf" >"$tmp/out" 2>&1; rc=$?
set -e
[ "$rc" = 2 ] && grep -q 'coordinator' "$tmp/out" || fail "ferry-worker with the shipped worker.conf (exit $rc): $(cat "$tmp/out")"
set +e
"$bin/ferry-repository" --config "$root/etc/ferry/repository.conf" >"$tmp/out" 2>&1; rc=$?
set -e
[ "$rc" = 2 ] && grep -q 'tls-cert' "$tmp/out" || fail "ferry-repository with the shipped repository.conf (exit $rc): $(cat "$tmp/out")"

# The coordinator from its configuration file (flags override it) under a
# stand-in service manager: READY=1 once it serves, STOPPING=1 on SIGTERM.
"$bin/ferry-coordinator" init --config "$root/etc/ferry/coordinator.conf" --data "$tmp/state" >"$tmp/token" 2>"$tmp/init.log" ||
  fail "ferry-coordinator init --config: $(cat "$tmp/init.log")"
grep -q '^fy_' "$tmp/token" || fail "ferry-coordinator init printed no token"
python3 - "$tmp/notify" >"$tmp/notified" 2>&1 <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(60)
for _ in range(2):
    print(s.recv(4096).decode(), flush=True)
PY
listener=$!
for _ in $(seq 50); do [ -S "$tmp/notify" ] && break; sleep 0.1; done
NOTIFY_SOCKET=$tmp/notify "$bin/ferry-coordinator" run --config "$root/etc/ferry/coordinator.conf" --data "$tmp/state" \
  --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --repository-listen off --ready-file "$tmp/ready" 2>"$tmp/run.log" &
coordinator_pid=$!
for _ in $(seq 300); do grep -q 'READY=1' "$tmp/notified" 2>/dev/null && break; sleep 0.1; done
grep -q 'READY=1' "$tmp/notified" || fail "no READY=1 from ferry-coordinator; its log: $(cat "$tmp/run.log")"
[ -f "$tmp/ready" ] || fail "READY=1 before the ready file was written"
# The web console, installed beside the binary (share/ferry/console) and
# found there by default, served at / with the security headers.
if grep -q '^FERRY_CONSOLE:BOOL=ON' "$build/CMakeCache.txt"; then
  [ -f "$root/usr/share/ferry/console/index.html" ] || fail "ferry-coordinator: no /usr/share/ferry/console/index.html"
  grep -q "serving the web console .* files from $root/usr/share/ferry/console" "$tmp/run.log" ||
    fail "the packaged coordinator does not serve its console: $(cat "$tmp/run.log")"
  python3 - "$tmp/ready" <<'PY' || fail "GET / of the packaged coordinator"
import json, sys, urllib.request
api = json.load(open(sys.argv[1]))["api"]
r = urllib.request.urlopen(api + "/jobs/3")
assert r.status == 200 and r.headers["Content-Type"].startswith("text/html"), r.headers
assert r.headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in r.headers["Content-Security-Policy"], r.headers
PY
fi
kill -TERM "$coordinator_pid"
wait "$coordinator_pid" || fail "ferry-coordinator did not stop cleanly: $(cat "$tmp/run.log")"
coordinator_pid=
wait "$listener" || true
grep -q 'STOPPING=1' "$tmp/notified" || fail "no STOPPING=1 from ferry-coordinator: $(cat "$tmp/notified")"

# What the coordinator's postinst does, into the scratch root: the user
# ferry (sysusers.d), then /var/lib/ferry owned by it (tmpfiles.d).
if command -v systemd-sysusers >/dev/null && command -v systemd-tmpfiles >/dev/null; then
  systemd-sysusers --root="$root" ferry-coordinator.conf >"$tmp/sysusers" 2>&1 || fail "systemd-sysusers: $(cat "$tmp/sysusers")"
  grep -q '^ferry:x:[0-9]*:[0-9]*:.*:/var/lib/ferry:/usr/sbin/nologin$' "$root/etc/passwd" ||
    fail "sysusers made no user ferry: $(cat "$root/etc/passwd")"
  systemd-tmpfiles --root="$root" --create ferry-coordinator.conf >"$tmp/tmpfiles" 2>&1 || fail "systemd-tmpfiles: $(cat "$tmp/tmpfiles")"
  uid=$(awk -F: '$1 == "ferry" {print $3}' "$root/etc/passwd")
  [ "$(stat -c '%u %a' "$root/var/lib/ferry")" = "$uid 700" ] || fail "/var/lib/ferry: $(stat -c '%u %a' "$root/var/lib/ferry"), not $uid 700"
fi

# The units. verify loads the units they refer to (sysinit.target, ...) from
# the root too: the host's are copied in beside ours.
if ! command -v systemd-analyze >/dev/null; then
  echo "SKIP: systemd-analyze is missing (package systemd; scripts/install-deps)"
  exit 77
fi
units=$root/usr/lib/systemd/system
for f in /usr/lib/systemd/system/* /lib/systemd/system/*; do
  [ -e "$units/$(basename "$f")" ] || cp -a "$f" "$units/" 2>/dev/null || true
done
systemd-analyze verify --root="$root" "$units"/ferry-*.service >"$tmp/verify" 2>&1 ||
  fail "systemd-analyze verify: $(cat "$tmp/verify")"
[ ! -s "$tmp/verify" ] || fail "systemd-analyze verify complained: $(cat "$tmp/verify")"
echo "OK: 4 packages, installed tree runs, units verify"
