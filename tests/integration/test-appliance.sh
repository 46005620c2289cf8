#!/usr/bin/env bash
# The worker appliance (issue 13): scripts/build-image builds it, twice with
# the same contents; booted under QEMU (TCG where KVM is nested, see
# tests/lib/appliance.sh) with user-mode networking, the ferry-worker inside
# reads its configuration from QEMU fw_cfg or from a config drive, and
# registers with a coordinator on this machine (10.0.2.2 from the guest) over
# TLS. A refused token and an unreachable coordinator are said plainly on the
# serial console, and the appliance keeps retrying without crashing.
. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"
. "$TESTS_DIR/lib/appliance.sh"
ROOT=$(cd "$TESTS_DIR/.." && pwd)
export FERRY_IMAGE_ZSTD_LEVEL=9  # 4 MB larger than the default, 40 s sooner
PASSED=0
# On a failure, the appliances' last words.
on_exit '((PASSED)) || for f in "$WORK"/appliance-*.log; do [[ -f $f ]] && { echo "== $f" >&2; tail -n 12 "$f" >&2; }; done'

# --- the image ---
"$ROOT/scripts/build-image" "$WORK/image" 2>"$WORK/build1.log" || { tail -20 "$WORK/build1.log" >&2; fail "build-image failed"; }
IMG=$WORK/image
size=$(stat -c %s "$IMG/ferry-appliance.qcow2")
((size <= 64 * 1024 * 1024)) || fail "ferry-appliance.qcow2 is $size bytes, over 64 MiB"
qemu-img check -q "$IMG/ferry-appliance.qcow2" || fail "the qcow2 does not check"
for want in "^initrd:/usr/bin/ferry-worker " "^initrd:/etc/ferry-release " "^initrd:/lib64/ld-linux-x86-64.so.2 " \
    "^initrd:/lib/modules/.*/virtio_net.ko " "^initrd:/lib/modules/.*/qemu_fw_cfg.ko " "^boot:/vmlinuz " "^boot:/initrd.img " \
    "^boot:/ldlinux.sys " "^# Ferry worker appliance [0-9]"; do
  grep -q "$want" "$IMG/manifest.txt" || fail "the manifest lacks $want"
done
release=$(sed -n 's/^# Ferry worker appliance //p' "$IMG/manifest.txt")
ok "image $release: qcow2 $((size / 1024 / 1024)) MiB, initrd.img $(($(stat -c %s "$IMG/initrd.img") / 1024 / 1024)) MiB"

# --- a coordinator on this machine, over TLS ---
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -days 2 -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
export SSL_CERT_FILE=$WORK/cert.pem  # the api helper's HTTPS
DATA=$WORK/coord
coord_init "$DATA"
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" \
  --heartbeat-interval-ms 1000 --heartbeat-deadline-ms 8000
RPC_PORT=${RPC##*:}
config_dir() {  # DIR TOKEN COORDINATOR_PORT: a configuration as the appliance reads it
  mkdir -p "$1"
  echo "$2" >"$1/token"
  cp "$WORK/cert.pem" "$1/ca.pem"
  cat >"$1/config" <<CONF
# ferry-worker's configuration; relative paths are files beside it
coordinator = 10.0.2.2:$3
tls-ca = ca.pem
tls-name = localhost
token-file = token
host = host-a
qmp-dir = /var/empty
CONF
}
fw_cfg_of() { local f; for f in "$1"/*; do printf -- '-fw_cfg name=opt/ferry/%s,file=%s ' "${f##*/}" "$f"; done; }

# --- fw_cfg: boots, registers ---
GOOD=$(worker_token appliance-a)
config_dir "$WORK/cfg-good" "$GOOD" "$RPC_PORT"
T0=$SECONDS
# shellcheck disable=SC2046
appliance_boot good "$IMG" $(fw_cfg_of "$WORK/cfg-good")
registered() { [[ $(api GET /workers | jpy "[w['state'] for w in d['workers'] if w['name'] == 'appliance-a'][0]") == connected ]]; }
wait_for "the appliance to register (console: $WORK/appliance-good.log)" 180 registered
booted_in=$((SECONDS - T0))
api GET /workers >"$WORK/workers.json"
python3 - "$WORK/workers.json" <<'PY' || fail "workers: $(cat "$WORK/workers.json")"
import json, sys
w = [x for x in json.load(open(sys.argv[1]))["workers"] if x["name"] == "appliance-a"][0]
assert w["host"] == "host-a" and w["state"] == "connected", w
assert w["version"], w
PY
for want in "ferry-appliance: Ferry worker appliance $release" "ferry-appliance: configuration from fw_cfg opt/ferry" \
    "ferry-appliance: network: eth0 10.0.2.15/24 (DHCP)" "ferry-appliance: starting ferry-worker"; do
  grep -qF "$want" "$WORK/appliance-good.log" || { cat "$WORK/appliance-good.log" >&2; fail "the console lacks '$want'"; }
done
grep -qF "$GOOD" "$WORK/appliance-good.log" && fail "the worker token appeared on the console"
ok "booted ($(appliance_accel)) and registered with the coordinator over TLS after ${booted_in} s; configuration from fw_cfg"
appliance_powerdown good 60 || fail "the power button did not power the appliance off: $(tail -3 "$WORK/appliance-good.log")"
grep -qF "ferry-appliance: shutting down" "$WORK/appliance-good.log" || fail "no orderly shutdown on the console"
ok "the power button powers it off (as a hypervisor's graceful shutdown does)"

# --- a refused token (config drive) and an unreachable coordinator (fw_cfg, booted from the qcow2) ---
config_dir "$WORK/cfg-bad" "frw-not-a-token" "$RPC_PORT"
appliance_config_drive "$WORK/cidata.img" "$WORK/cfg-bad"
appliance_boot badtoken "$IMG" -drive "file=$WORK/cidata.img,if=virtio,format=raw,readonly=on"
closed=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
config_dir "$WORK/cfg-away" "$GOOD" "$closed"
# This one from the qcow2, through the BIOS and syslinux.
# shellcheck disable=SC2046
appliance_boot_disk away "$IMG" $(fw_cfg_of "$WORK/cfg-away")
said_twice() { (($(grep -c "$2" "$WORK/appliance-$1.log") >= 2)); }
wait_for "the refusal, twice, on the console ($WORK/appliance-badtoken.log)" 240 said_twice badtoken "token refused"
wait_for "the unreachable coordinator, twice, on the console ($WORK/appliance-away.log)" 180 said_twice away "coordinator 10.0.2.2:$closed: connect(): Connection refused"
for name in badtoken away; do
  kill -0 "${APPLIANCE_PID[$name]}" 2>/dev/null || fail "appliance $name stopped: $(tail -5 "$WORK/appliance-$name.log")"
  grep -qiE "kernel panic|segfault|core dumped|terminate called" "$WORK/appliance-$name.log" &&
    fail "appliance $name crashed: $(grep -iE "panic|segfault|dumped|terminate" "$WORK/appliance-$name.log" | head -3)"
done
grep -qF "configuration from config drive /dev/vda" "$WORK/appliance-badtoken.log" || fail "the config drive was not read"
grep -qF "frw-not-a-token" "$WORK/appliance-badtoken.log" && fail "the refused token appeared on the console"
[[ $(api GET /workers | jpy "len(d['workers'])") == 1 ]] || fail "a worker with a refused token was registered"
ok "refused token: '$(grep -m1 "token refused" "$WORK/appliance-badtoken.log" | cut -c1-110)'"
grep -qF "Ferry worker appliance $release" "$WORK/appliance-away.log" || fail "the qcow2 did not boot the appliance"
ok "unreachable coordinator (booted from the qcow2): '$(grep -m1 "Connection refused" "$WORK/appliance-away.log" | cut -c1-130)'"
appliance_stop badtoken
appliance_stop away

# --- reproducible: a second build has the same contents ---
"$ROOT/scripts/build-image" "$WORK/image2" 2>"$WORK/build2.log" || { tail -20 "$WORK/build2.log" >&2; fail "the second build failed"; }
diff "$IMG/manifest.txt" "$WORK/image2/manifest.txt" >&2 || fail "two builds differ (manifest)"
cmp -s "$IMG/initrd.img" "$WORK/image2/initrd.img" || fail "two builds' initrd.img differ byte-wise"
cmp -s "$IMG/vmlinuz" "$WORK/image2/vmlinuz" || fail "two builds' vmlinuz differ"
ok "a second build: the same $(grep -c . "$IMG/manifest.txt") manifest lines, byte-identical vmlinuz and initrd.img"
PASSED=1
