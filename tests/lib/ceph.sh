# shellcheck shell=bash
# A throwaway one-node Ceph cluster with an S3 gateway for tests and benchmarks
# (sourced). One mon, one mgr, one bluestore OSD on a sparse file and one
# radosgw, all on 127.0.0.1, all state (config, keyrings, data, logs, sockets)
# in one directory, no systemd, stopped by pid. See docs/object-storage-tests.md.
# Skips the caller (exit 77) when the Ceph binaries are missing
# (ceph-mon ceph-mgr ceph-osd radosgw ceph-common: scripts/install-deps).
#
#   ceph_start DIR     start the cluster in DIR (created), wait until the PGs
#                      are active, HEALTH_OK and a signed S3 request answers.
#                      Exports CEPH_S3_ENDPOINT (http://127.0.0.1:PORT),
#                      CEPH_S3_ACCESS_KEY, CEPH_S3_SECRET_KEY, CEPH_S3_REGION
#                      (the zonegroup's name, for SigV4) and sets CEPH_DIR,
#                      CEPH_CONF_FILE, CEPH_MON_PORT, CEPH_RGW_PORT, CEPH_MON_PID,
#                      CEPH_MGR_PID, CEPH_OSD_PID, CEPH_RGW_PID and
#                      CEPH_STARTUP_SECONDS; the pids are also in DIR/pids.
#   ceph_stop          stop radosgw, mgr, OSD, mon (in that order) by pid and
#                      wait until each is really gone (not a zombie); SIGKILL
#                      after 20 s. Fails if one cannot be ended.
#   ceph_kill_rgw      SIGKILL radosgw; wait until it is gone
#   ceph_restart_rgw   start radosgw again on the same port; wait until it answers
#   ceph_cleanup [RC]  for the caller's EXIT trap: ceph_stop, ignoring errors;
#                      prints the log tails first when RC (default $?) is not 0
#   ceph_pids          the pids of our daemons still running, one a line
#   ceph_rss_kib       the sum of our daemons' VmRSS in KiB
#   ceph_cli ARGS...   the ceph command against this cluster
#   ceph_logs_tail     the last lines of every log in DIR/log
#
# Memory: about 280 MB RSS in all (osd_memory_target is 896 MiB, the lowest
# value Ceph honours; the OSD stays well below it for test-sized data).

CEPH_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CEPH_S3_PY=$CEPH_LIB_DIR/s3.py
_CEPH_BINARIES=(ceph-mon ceph-mgr ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool)
CEPH_MON_PID='' CEPH_MGR_PID='' CEPH_OSD_PID='' CEPH_RGW_PID='' CEPH_DIR=''

_ceph_log() { echo "ceph.sh [${SECONDS}s]: $*" >&2; }

# Startup phases with their time since ceph_start began (CEPH_VERBOSE=0: quiet).
_ceph_phase() {
  [[ ${CEPH_VERBOSE:-1} == 0 ]] || _ceph_log "$(( ($(date +%s%N) - _CEPH_T0NS) / 1000000 )) ms: $*"
}

_ceph_fail() {
  echo "ceph.sh: FAIL: $*" >&2
  ceph_logs_tail >&2
  _CEPH_TAILS_SHOWN=1
  return 1
}

_ceph_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

ceph_cli() { timeout 60 ceph --conf "$CEPH_CONF_FILE" --connect-timeout 20 "$@"; }

ceph_logs_tail() {
  [[ -n $CEPH_DIR && -d $CEPH_DIR/log ]] || return 0
  local f
  for f in "$CEPH_DIR"/log/*; do
    [[ -s $f ]] || continue
    echo "----- tail of $f"
    tail -n 25 "$f"
  done
}

# _ceph_alive PID: the process exists and is not a zombie.
_ceph_alive() {
  local state
  [[ -n $1 && -r /proc/$1/stat ]] || return 1
  state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n $state && $state != Z && $state != X ]]
}

# _ceph_wait_gone PID SECONDS: until the process is gone or a zombie, then
# reaped (it is our child); 1 if it is still running after SECONDS.
_ceph_wait_gone() {
  local pid=$1 deadline=$((SECONDS + $2))
  while _ceph_alive "$pid"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.05
  done
  wait "$pid" 2>/dev/null || true
  # Not our child (started from another shell): wait for init to reap it.
  while [[ -e /proc/$pid ]] && ((SECONDS < deadline + 5)); do sleep 0.05; done
  [[ ! -e /proc/$pid ]] || ! _ceph_alive "$pid"
}

# _ceph_end PID NAME: SIGTERM, wait, SIGKILL after 20 s, wait.
_ceph_end() {
  local pid=$1 name=$2
  [[ -n $pid ]] || return 0
  _ceph_alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  if ! _ceph_wait_gone "$pid" 20; then
    _ceph_log "$name ($pid) did not end on SIGTERM in 20 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    _ceph_wait_gone "$pid" 10 || { echo "ceph.sh: $name ($pid) is still running" >&2; return 1; }
  fi
}

# _ceph_key NAME CAPS...: a key for NAME in $CEPH_DIR/NAME/keyring, also
# imported into the mon's initial keyring.
_ceph_key() {
  local name=$1; shift
  ceph-authtool --create-keyring "$CEPH_DIR/$name/keyring" --gen-key -n "$name" "$@" >/dev/null &&
    ceph-authtool "$CEPH_DIR/mon.keyring" --import-keyring "$CEPH_DIR/$name/keyring" >/dev/null
}

_ceph_write_pids() {
  printf 'mon %s\nmgr %s\nosd %s\nrgw %s\n' "$CEPH_MON_PID" "$CEPH_MGR_PID" "$CEPH_OSD_PID" "$CEPH_RGW_PID" >"$CEPH_DIR/pids"
}

# _ceph_wait_for SECONDS WHAT PID COMMAND...: until COMMAND succeeds; fails
# when the daemon PID ends or after SECONDS.
_ceph_wait_for() {
  local secs=$1 what=$2 pid=$3; shift 3
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    _ceph_alive "$pid" || { _ceph_fail "$what: the daemon ($pid) ended"; return 1; }
    ((SECONDS < deadline)) || { _ceph_fail "$what: not within $secs s"; return 1; }
    sleep 0.1
  done
}

_ceph_osd_up() { ceph_cli osd dump --format json | python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if d["osds"] and all(o["up"] and o["in"] for o in d["osds"]) else 1)'; }

_ceph_mgr_available() { ceph_cli mgr stat --format json | python3 -c '
import json, sys; sys.exit(0 if json.load(sys.stdin)["available"] else 1)'; }

# Every PG active (and none creating or peering).
_ceph_pgs_active() { ceph_cli pg stat --format json | python3 -c '
import json, sys
d = json.load(sys.stdin)
d = d.get("pg_summary", d)
n = d.get("num_pgs", 0)
act = sum(s["num"] for s in d.get("num_pg_by_state", []) if "active" in s["name"].split("+"))
sys.exit(0 if n > 0 and act == n else 1)'; }

_ceph_health_ok() { [[ $(ceph_cli health 2>/dev/null) == HEALTH_OK* ]]; }

# Any HTTP answer from radosgw (an anonymous ListBuckets).
_ceph_rgw_answers() {
  python3 - "$CEPH_RGW_PORT" <<'EOF'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=2)
c.request("GET", "/")
sys.exit(0 if c.getresponse().status in (200, 403) else 1)
EOF
}

_ceph_start_rgw() {
  radosgw --conf "$CEPH_CONF_FILE" -n client.rgw.a -f >>"$CEPH_DIR/log/client.rgw.a.out" 2>&1 &
  CEPH_RGW_PID=$!
  _ceph_write_pids
}

ceph_start() {
  local dir=$1 b missing=()
  for b in "${_CEPH_BINARIES[@]}"; do command -v "$b" >/dev/null || missing+=("$b"); done
  if ((${#missing[@]})); then
    echo "SKIP: Ceph is not installed (missing ${missing[*]}; packages ceph-mon ceph-mgr ceph-osd radosgw ceph-common, see scripts/install-deps)"
    exit 77
  fi
  if [[ $(id -u) != 0 ]]; then
    echo "SKIP: the Ceph harness runs as root"
    exit 77
  fi
  local t0ns
  t0ns=$(date +%s%N)
  _CEPH_T0NS=$t0ns
  mkdir -p "$dir" && CEPH_DIR=$(cd "$dir" && pwd)
  mkdir -p "$CEPH_DIR"/{log,run,mon.a,mgr.x,osd.0,client.rgw.a,client.admin}
  CEPH_CONF_FILE=$CEPH_DIR/ceph.conf
  CEPH_MON_PORT=$(_ceph_free_port)
  CEPH_RGW_PORT=$(_ceph_free_port)
  while [[ $CEPH_RGW_PORT == "$CEPH_MON_PORT" ]]; do CEPH_RGW_PORT=$(_ceph_free_port); done
  local fsid osd_uuid d=$CEPH_DIR
  fsid=$(cat /proc/sys/kernel/random/uuid)
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  cat >"$CEPH_CONF_FILE" <<EOF
# Written by tests/lib/ceph.sh: a one-node test cluster, everything in $d.
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$CEPH_MON_PORT]
mon initial members = a
public addr = 127.0.0.1
ms bind msgr1 = false
ms bind msgr2 = true
keyring = $d/\$name/keyring
run dir = $d/run
admin socket = $d/run/\$name.asok
pid file = $d/run/\$name.pid
log file = $d/log/\$name.log
log to stderr = false
err to stderr = true
mon cluster log file = $d/log/cluster.log
crash dir = $d/crash
auth allow insecure global id reclaim = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 1
paxos propose interval = 0.05
# PG states reach the mgr (and so "ceph pg stat", health) within a second.
mgr stats period = 1
mgr tick period = 1
mon mgr digest period = 1

[mon]
mon data = $d/\$name

[mgr]
mgr data = $d/\$name
mgr initial modules =
mgr disabled modules = alerts diskprediction_local influx insights iostat k8sevents localpool mirroring nfs osd_perf_query osd_support prometheus restful rook selftest snap_schedule stats telegraf test_orchestrator zabbix dashboard cephadm

[osd]
osd data = $d/\$name
osd objectstore = bluestore
bluestore block path = $d/\$name.block
bluestore block create = true
bluestore block size = 10737418240
osd memory target = 939524096
bluestore fsck on mkfs = false

[client.rgw.a]
rgw data = $d/\$name
rgw frontends = beast endpoint=127.0.0.1:$CEPH_RGW_PORT
rgw gc obj min wait = 1
rgw gc processor period = 10
rgw enable usage log = false
EOF
  # Every key is made here and given to the mon's --mkfs (no "auth
  # get-or-create" round trips later); the mon keeps its copy in its data dir.
  ceph-authtool --create-keyring "$d/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null &&
    _ceph_key client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' &&
    _ceph_key mgr.x --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *' &&
    _ceph_key osd.0 --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *' &&
    _ceph_key client.rgw.a --cap mon 'allow rw' --cap osd 'allow rwx' --cap mgr 'allow rw' &&
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$CEPH_MON_PORT]" "$d/monmap" >"$d/log/setup.log" 2>&1 &&
    ceph-mon --conf "$CEPH_CONF_FILE" --mkfs -i a --monmap "$d/monmap" --keyring "$d/mon.keyring" >>"$d/log/setup.log" 2>&1 ||
    { _ceph_fail "mon --mkfs"; return 1; }

  ceph-mon --conf "$CEPH_CONF_FILE" -i a -f >>"$d/log/mon.a.out" 2>&1 &
  CEPH_MON_PID=$!
  _ceph_write_pids
  _ceph_wait_for 30 "mon quorum" "$CEPH_MON_PID" ceph_cli mon stat || return 1
  _ceph_phase "mon up"

  ceph-mgr --conf "$CEPH_CONF_FILE" -i x -f >>"$d/log/mgr.x.out" 2>&1 &
  CEPH_MGR_PID=$!
  _ceph_write_pids

  local osd_id
  osd_id=$(ceph_cli osd new "$osd_uuid" 2>>"$d/log/setup.log") && [[ $osd_id == 0 ]] ||
    { _ceph_fail "ceph osd new said '$osd_id'"; return 1; }
  ceph-osd --conf "$CEPH_CONF_FILE" -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$d/log/setup.log" 2>&1 ||
    { _ceph_fail "osd --mkfs"; return 1; }
  ceph-osd --conf "$CEPH_CONF_FILE" -i 0 -f >>"$d/log/osd.0.out" 2>&1 &
  CEPH_OSD_PID=$!
  _ceph_write_pids
  _ceph_phase "OSD created"

  _ceph_wait_for 60 "OSD up" "$CEPH_OSD_PID" _ceph_osd_up || return 1
  _ceph_phase "OSD up"
  _ceph_start_rgw
  _ceph_wait_for 60 "radosgw answering on 127.0.0.1:$CEPH_RGW_PORT" "$CEPH_RGW_PID" _ceph_rgw_answers || return 1
  _ceph_phase "radosgw answering"

  CEPH_S3_ACCESS_KEY=$(python3 -c 'import secrets; print("FERRY" + secrets.token_hex(8).upper())')
  CEPH_S3_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(30))')
  radosgw-admin --conf "$CEPH_CONF_FILE" user create --uid=ferry-test --display-name="Ferry tests" \
    --access-key="$CEPH_S3_ACCESS_KEY" --secret-key="$CEPH_S3_SECRET_KEY" >>"$d/log/setup.log" 2>&1 ||
    { _ceph_fail "radosgw-admin user create"; return 1; }
  CEPH_S3_REGION=$(radosgw-admin --conf "$CEPH_CONF_FILE" zonegroup get 2>>"$d/log/setup.log" |
    python3 -c 'import json, sys; d = json.load(sys.stdin); print(d.get("api_name") or d["name"])') ||
    { _ceph_fail "radosgw-admin zonegroup get"; return 1; }
  CEPH_S3_ENDPOINT=http://127.0.0.1:$CEPH_RGW_PORT
  export CEPH_S3_ENDPOINT CEPH_S3_ACCESS_KEY CEPH_S3_SECRET_KEY CEPH_S3_REGION
  printf 'CEPH_S3_ENDPOINT=%s\nCEPH_S3_ACCESS_KEY=%s\nCEPH_S3_SECRET_KEY=%s\nCEPH_S3_REGION=%s\n' \
    "$CEPH_S3_ENDPOINT" "$CEPH_S3_ACCESS_KEY" "$CEPH_S3_SECRET_KEY" "$CEPH_S3_REGION" >"$d/s3.env"

  # A signed request (the new user's ListBuckets) must answer; then the
  # pools radosgw created must be active and the cluster healthy.
  _ceph_wait_for 30 "a signed S3 request" "$CEPH_RGW_PID" python3 "$CEPH_S3_PY" lb || return 1
  _ceph_phase "S3 user and signed request"
  _ceph_wait_for 30 "every PG active" "$CEPH_OSD_PID" _ceph_pgs_active || return 1
  _ceph_wait_for 30 "the mgr available" "$CEPH_MGR_PID" _ceph_mgr_available || return 1
  if ! _ceph_wait_for 30 "HEALTH_OK" "$CEPH_MON_PID" _ceph_health_ok; then
    ceph_cli health detail >&2
    return 1
  fi
  _ceph_phase "PGs active, mgr available, HEALTH_OK"
  CEPH_STARTUP_SECONDS=$(( ($(date +%s%N) - t0ns) / 1000000 ))
  CEPH_STARTUP_SECONDS=$(printf '%d.%03d' $((CEPH_STARTUP_SECONDS / 1000)) $((CEPH_STARTUP_SECONDS % 1000)))
  _ceph_log "cluster up in ${CEPH_STARTUP_SECONDS}s: mon $CEPH_MON_PID mgr $CEPH_MGR_PID osd $CEPH_OSD_PID rgw $CEPH_RGW_PID, S3 at $CEPH_S3_ENDPOINT (region $CEPH_S3_REGION)"
}

ceph_kill_rgw() {
  [[ -n $CEPH_RGW_PID ]] || { echo "ceph.sh: radosgw is not running" >&2; return 1; }
  kill -KILL "$CEPH_RGW_PID" 2>/dev/null || true
  _ceph_wait_gone "$CEPH_RGW_PID" 10 || { echo "ceph.sh: radosgw ($CEPH_RGW_PID) survived SIGKILL" >&2; return 1; }
  _ceph_log "radosgw ($CEPH_RGW_PID) killed"
  CEPH_RGW_PID=''
  _ceph_write_pids
}

ceph_restart_rgw() {
  [[ -n $CEPH_DIR ]] || { echo "ceph.sh: no cluster" >&2; return 1; }
  if _ceph_alive "$CEPH_RGW_PID"; then _ceph_end "$CEPH_RGW_PID" radosgw || return 1; fi
  local t0ns
  t0ns=$(date +%s%N)
  _ceph_start_rgw
  # The port may linger for a moment after a kill: the wait covers a
  # radosgw that failed to bind (it ends, and is started again).
  local tries=0
  until _ceph_wait_for 60 "radosgw answering again on 127.0.0.1:$CEPH_RGW_PORT" "$CEPH_RGW_PID" _ceph_rgw_answers 2>/dev/null; do
    ((++tries < 3)) || { _ceph_fail "radosgw did not come back"; return 1; }
    wait "$CEPH_RGW_PID" 2>/dev/null || true
    sleep 1
    _ceph_start_rgw
  done
  _ceph_wait_for 30 "a signed S3 request after the restart" "$CEPH_RGW_PID" python3 "$CEPH_S3_PY" lb || return 1
  _ceph_log "radosgw restarted ($CEPH_RGW_PID) in $(( ($(date +%s%N) - t0ns) / 1000000 )) ms"
}

ceph_pids() {
  local p
  for p in "$CEPH_RGW_PID" "$CEPH_MGR_PID" "$CEPH_OSD_PID" "$CEPH_MON_PID"; do
    _ceph_alive "$p" && echo "$p"
  done
  return 0
}

ceph_rss_kib() {
  local p total=0 kib
  for p in $(ceph_pids); do
    kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null) || kib=0
    total=$((total + ${kib:-0}))
  done
  echo "$total"
}

ceph_stop() {
  local rc=0
  _ceph_end "$CEPH_RGW_PID" radosgw || rc=1
  _ceph_end "$CEPH_MGR_PID" ceph-mgr || rc=1
  _ceph_end "$CEPH_OSD_PID" ceph-osd || rc=1
  _ceph_end "$CEPH_MON_PID" ceph-mon || rc=1
  if ((rc == 0)); then
    CEPH_RGW_PID='' CEPH_MGR_PID='' CEPH_OSD_PID='' CEPH_MON_PID=''
    [[ -z $CEPH_DIR ]] || _ceph_write_pids
  fi
  return $rc
}

ceph_cleanup() {
  local rc=${1:-$?}
  [[ -n $CEPH_DIR ]] || return 0
  if ((rc != 0)) && [[ -z ${_CEPH_TAILS_SHOWN:-} ]]; then
    ceph_logs_tail >&2
  fi
  ceph_stop || true
}
