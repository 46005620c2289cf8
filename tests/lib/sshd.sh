# shellcheck shell=bash
# A throwaway sshd for tests (sourced after integration/common.sh): root on
# 127.0.0.1 on a free port, a fresh host key and a fresh client key, all in
# one directory; stopped by pid on exit. Skips the test (exit 77) where sshd
# cannot run (not root, no openssh-server: scripts/install-deps).
#   sshd_start DIR [PREFIX...]   start it (PREFIX: a command to run it under,
#                                e.g. nsenter into a mount namespace). Sets
#                                SSHD_PORT, SSHD_PID, SSHD_KEY (the client's
#                                private key, in authorized_keys),
#                                SSHD_OTHER_KEY (a key that is not) and
#                                SSHD_KNOWN_HOSTS (the host key, for
#                                [127.0.0.1]:PORT); the log is DIR/sshd.log
#   sshd_stop                    stop it

sshd_start() {
  local dir=$1; shift
  if [[ $(id -u) != 0 || ! -x /usr/sbin/sshd ]]; then
    echo "SKIP: needs root and /usr/sbin/sshd (openssh-server, see scripts/install-deps)"
    exit 77
  fi
  mkdir -p "$dir" && chmod 700 "$dir"
  local k
  for k in host_key client_key other_key; do ssh-keygen -q -t ed25519 -N '' -C "ferry-test-$k" -f "$dir/$k"; done
  cp "$dir/client_key.pub" "$dir/authorized_keys" && chmod 600 "$dir/authorized_keys"
  SSHD_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # Stream-local forwarding needs AllowTcpForwarding too (OpenSSH checks the
  # same permission list for unix paths): "local" allows what the worker uses.
  cat >"$dir/sshd_config" <<EOF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $dir/host_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowStreamLocalForwarding yes
AllowTcpForwarding local
X11Forwarding no
EOF
  mkdir -p /run/sshd  # its privilege separation directory
  "$@" /usr/sbin/sshd -D -e -f "$dir/sshd_config" >>"$dir/sshd.log" 2>&1 &
  SSHD_PID=$!
  on_exit "kill $SSHD_PID 2>/dev/null"
  local deadline=$((SECONDS + 10))
  until grep -q "Server listening" "$dir/sshd.log" 2>/dev/null; do
    kill -0 "$SSHD_PID" 2>/dev/null && ((SECONDS < deadline)) || { cat "$dir/sshd.log" >&2; fail "sshd did not start"; }
    sleep 0.05
  done
  echo "[127.0.0.1]:$SSHD_PORT $(cut -d' ' -f1,2 "$dir/host_key.pub")" >"$dir/known_hosts"
  SSHD_KEY=$dir/client_key SSHD_OTHER_KEY=$dir/other_key SSHD_KNOWN_HOSTS=$dir/known_hosts
}

sshd_stop() { kill "$SSHD_PID" 2>/dev/null; wait "$SSHD_PID" 2>/dev/null || true; }
