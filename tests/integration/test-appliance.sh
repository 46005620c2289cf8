#!/usr/bin/env bash
# The worker appliance (issue 13): scripts/build-image builds it, twice with
# the same contents; booted under QEMU (TCG where KVM is nested, see
# tests/lib/appliance.sh) with user-mode networking, the ferry-worker inside
# reads its configuration from QEMU fw_cfg or from a config drive, and
# registers with a coordinator on this machine (10.0.2.2 from the guest) over
# TLS, then backs up a VM of its "host" (this machine): QEMU controlled over
# SSH to a test sshd, the snapshot read over NBD/TCP with TLS-PSK, the chunks
# sent to the coordinator's repository service over TLS; the point verifies
# and restores bit-exact. A refused token and an unreachable coordinator are
# said plainly on the serial console, and the appliance keeps retrying
# without crashing; the power button powers it off.
. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"
. "$TESTS_DIR/lib/appliance.sh"
. "$TESTS_DIR/lib/sshd.sh"
MiB=$((1024 * 1024))
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
# The appliance reaches this machine's loopback as 10.0.2.2: the repository
# service is advertised there.
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" \
  --heartbeat-interval-ms 1000 --heartbeat-deadline-ms 8000 --repository-advertise 10.0.2.2
RPC_PORT=${RPC##*:}
"$FERRY" init --repo "$WORK/repo" --chunk-size 1M >/dev/null
api POST /repositories "{\"name\": \"main\", \"location\": \"$WORK/repo\"}" >/dev/null

# --- the "host": this machine, a VM on it with its QMP socket where Proxmox keeps
# them, reachable from the appliance only through sshd ---
sshd_start "$WORK/sshd"
mkdir -p "$WORK/qemu-server"
chmod 755 "$WORK"
make_data_disk "$WORK/vm-a1-virtio0.qcow2" qcow2 $((32 * MiB)) 11
VM_NAME=vm-a1 vm_start "$WORK/vm-vm-a1" "virtio0=$WORK/vm-a1-virtio0.qcow2"
ln -sf "$WORK/vm-vm-a1/qmp.sock" "$WORK/qemu-server/101.qmp"
ln -sf "$WORK/vm-vm-a1/qemu.pid" "$WORK/qemu-server/101.pid"
config_dir() {  # DIR TOKEN COORDINATOR_PORT: a configuration as the appliance reads it, over TLS
  appliance_qmp_ssh_config "$1" "$2" "$3" host-a "$WORK/qemu-server" "tls-ca = ca.pem" "tls-name = localhost"
  cp "$WORK/cert.pem" "$1/ca.pem"
}

# --- fw_cfg: boots, registers ---
GOOD=$(worker_token appliance-a)
config_dir "$WORK/cfg-good" "$GOOD" "$RPC_PORT"
T0=$SECONDS
# shellcheck disable=SC2046
appliance_boot good "$IMG" $(appliance_fw_cfg "$WORK/cfg-good")
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

# --- a backup by the appliance: QMP over SSH, NBD over TCP with TLS, the repository service ---
vm_listed() { [[ $(api GET "/vms?name=vm-a1" | jpy "d['vms'][0]['state'] if d['vms'] else ''") == paused ]]; }
wait_for "vm-a1 in the appliance's inventory (over SSH)" 60 vm_listed
qemu-img convert -U -O raw "$WORK/vm-a1-virtio0.qcow2" "$WORK/ref.raw"
JOB=$(api POST /jobs '{"name": "appliance", "repository": 1, "selection": {"vms": ["vm-a1"]}, "retries": {"count": 0, "interval_s": 0}}' | jpy 'd["id"]')
S=$(api POST "/jobs/$JOB/start" | jpy 'd["session"]')
T1=$SECONDS
wait_for "session $S to end" 300 session_ended "$S"
api GET "/sessions/$S" >"$WORK/s.json"
[[ $(jpy 'd["state"]' <"$WORK/s.json") == succeeded ]] ||
  { api GET "/sessions/$S/log" >&2; fail "session $S: $(jpy '[d["state"], d.get("reason")]' <"$WORK/s.json")"; }
api GET "/sessions/$S/log" >"$WORK/log.json"
grep -q "from nbds://10.0.2.2:" "$WORK/log.json" || fail "the disk was not read over NBD/TCP with TLS from the host: $(head -c 2000 "$WORK/log.json")"
"$FERRY" verify --repo "$WORK/repo" >"$WORK/verify.log" 2>&1 || fail "verify: $(cat "$WORK/verify.log")"
point=$(jpy 'd["snapshots"][0]["point_id"]' <"$WORK/s.json")
"$FERRY" restore --repo "$WORK/repo" --point "$point" --disk virtio0 --to "$WORK/restored.raw" 2>/dev/null
cmp -s "$WORK/restored.raw" "$WORK/ref.raw" || fail "the appliance's point does not restore bit-exact"
[[ -z $(ls -A "$WORK/host-scratch" 2>/dev/null) ]] || fail "snapshot leftovers on the host: $(ls -A "$WORK/host-scratch")"
ok "the appliance backed up vm-a1 in $((SECONDS - T1)) s (QMP over SSH, NBD over TLS, the repository service); verified, restored bit-exact"
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
appliance_boot_disk away "$IMG" $(appliance_fw_cfg "$WORK/cfg-away")
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
