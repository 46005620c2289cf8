#!/usr/bin/env bash
# The coordinator under the attacks of issue 15 ("Found"), on loopback, bounded
# in time: what each did before, and what it must do now.
#   - 600 connections without a token, each announcing a 1 MiB body (RSS went
#     from 27 MB to 634 MB): refused before the body, over the per-address
#     cap closed at once; RSS stays under a ceiling while a legitimate client
#     (another address) keeps getting answers.
#   - slow headers (slowloris): closed after the header timeout.
#   - Transfer-Encoding: gzip with a smuggled request behind it: 400, closed,
#     the smuggled request never runs.
#   - NUL characters and duplicate keys in JSON bodies: 400 naming the member.
#   - on the worker RPC port: 10 frames announcing 60 MiB (RSS went from 406 MB
#     to 1,020 MB), idle connections and half-sent frames (open for ever):
#     closed, RSS under the ceiling.
# The attackers connect from 127.0.0.2, the legitimate client from 127.0.0.1.
. "$(dirname "$0")/common.sh" "$@"
. "$TESTS_DIR/lib/coordinator.sh"

DATA=$WORK/coord
coord_init "$DATA"
coord_start "$DATA" --listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0
PORT=${API##*:}
# The documented ceiling (docs/api.md, "Limits"): RSS grows by less than this
# under each attack.
CEILING_MB=64

python3 - "$PORT" "$COORD_PID" "$TOKEN" "$CEILING_MB" "$RPC" <<'PY' || fail "the coordinator gave way to an attack (above)"
import json, socket, struct, sys, threading, time, urllib.request

port, pid, token, ceiling_mb = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rpc_host, rpc_port = sys.argv[5].rsplit(":", 1)

def rss_mb():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("the coordinator is gone")

def api(method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1{path}", data=body, method=method,
                                 headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")

def attacker():
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s

# A legitimate client polls all along; every answer must come, and fast.
stop = threading.Event()
answers, failures, worst = [0], [], [0.0]
def legit():
    while not stop.is_set():
        t = time.monotonic()
        try:
            status, _ = api("GET", "/status")
            if status != 200: failures.append(status)
            answers[0] += 1
        except Exception as e:
            failures.append(repr(e))
        worst[0] = max(worst[0], time.monotonic() - t)
        time.sleep(0.05)
poller = threading.Thread(target=legit)
poller.start()

base = rss_mb()
peak = base
def sample():
    global peak
    peak = max(peak, rss_mb())

# --- 600 connections, each a header without a token and a 1 MiB body -----
socks, refused, unauthorized = [], 0, 0
body = b"x" * (1 << 20)
for i in range(600):
    try:
        s = attacker()
        s.sendall(b"POST /api/v1/hosts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        socks.append(s)
    except OSError:
        refused += 1
    if i % 50 == 0: sample()
def push(s):
    try:
        s.sendall(body)
    except OSError:
        pass
pushers = [threading.Thread(target=push, args=(s,)) for s in socks]
for t in pushers: t.start()
for _ in range(20):
    sample(); time.sleep(0.1)
for s in socks:
    try:
        s.settimeout(3)
        if s.recv(64).startswith(b"HTTP/1.1 401"): unauthorized += 1
    except OSError:
        pass
for t in pushers: t.join(10)
for s in socks: s.close()
sample()
print(f"600 unauthenticated 1 MiB requests: {unauthorized} answered 401 before their body, the rest closed "
      f"(over the per-address cap); RSS {base:.0f} MB -> peak {peak:.0f} MB")
assert unauthorized >= 1, "no request was answered 401"
assert peak - base < ceiling_mb, f"RSS grew by {peak - base:.0f} MB (ceiling {ceiling_mb} MB)"

# --- slowloris: headers that never end ---------------------------------------
slow = [attacker() for _ in range(40)]
for s in slow: s.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n")
t0 = time.monotonic()
closed = 0
for s in slow:
    s.settimeout(max(0.1, 15 - (time.monotonic() - t0)))
    try:
        if s.recv(64) == b"": closed += 1
    except socket.timeout:
        pass
    except OSError:
        closed += 1
    s.close()
took = time.monotonic() - t0
print(f"40 slow headers: {closed} closed by the server after {took:.1f} s")
assert closed == 40 and took < 14, (closed, took)

# --- request smuggling ---------------------------------------------------------
s = attacker()
smuggled = json.dumps({"name": "smuggled", "platform": "libvirt"}).encode()
s.sendall(b"POST /api/v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode() +
          b"\r\nTransfer-Encoding: gzip\r\n\r\n"
          b"POST /api/v1/hosts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode() +
          b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(smuggled) + smuggled)
reply = b""
s.settimeout(5)
while True:
    chunk = s.recv(4096)
    if not chunk: break
    reply += chunk
s.close()
assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
assert reply.count(b"HTTP/1.1") == 1, reply
time.sleep(0.5)
status, hosts = api("GET", "/hosts")
assert status == 200 and all(h["name"] != "smuggled" for h in hosts["hosts"]), hosts
print("Transfer-Encoding: gzip: 400 and closed; the smuggled request did not run")

# --- NUL characters and duplicate keys ----------------------------------------
for body, field in [(b'{"name": "r", "location": "/tmp/\\u0000x"}', "location"),
                    (b'{"name": "r", "location": "/a", "location": "/b"}', "location")]:
    status, reply = api("POST", "/repositories", body)
    assert status == 400 and reply["error"]["field"] == field, (status, reply)
status, repos = api("GET", "/repositories")
assert repos["repositories"] == [], repos
print("NUL in a string and a duplicate key: 400 naming the member; nothing stored")

# --- the worker RPC port -------------------------------------------------------
# Before: 10 connections each announcing a 60 MiB frame took RSS from 406 MB to
# 1,020 MB, and an idle or half-sent connection stayed open for ever.
def rpc_attacker():
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    s.settimeout(5)
    s.connect((rpc_host, int(rpc_port)))
    return s

def closed_by_peer(s, within):
    """True if the server closes `s` within `within` seconds."""
    s.settimeout(within)
    try:
        while True:
            if s.recv(65536) == b"": return True
    except socket.timeout:
        return False
    except OSError:
        return True

base = rss_mb()
peak = base
huge = [rpc_attacker() for _ in range(10)]
frame = struct.pack("<II", 0, (60 << 20) // 8)  # one segment of 60 MiB (Cap'n Proto framing)
megabyte = b"\0" * (1 << 20)
def feed(s):
    try:
        s.sendall(frame)
        for _ in range(60): s.sendall(megabyte)
    except OSError:
        pass
feeders = [threading.Thread(target=feed, args=(s,)) for s in huge]
for t in feeders: t.start()
for _ in range(30):
    sample(); time.sleep(0.1)
for t in feeders: t.join(30)
closed = sum(closed_by_peer(s, 5) for s in huge)
for s in huge: s.close()
sample()
print(f"10 RPC frames announcing 60 MiB: {closed} connections closed; RSS {base:.0f} MB -> peak {peak:.0f} MB")
assert closed == 10, closed
assert peak - base < ceiling_mb, f"RSS grew by {peak - base:.0f} MB (ceiling {ceiling_mb} MB)"

# Idle connections and half-sent frames: closed by the 10 s registration timeout.
idle = [rpc_attacker() for _ in range(20)]
half = [rpc_attacker() for _ in range(10)]
for s in half: s.sendall(struct.pack("<II", 0, 128) + b"\0" * 100)  # 1 KiB announced, 100 bytes sent
t0 = time.monotonic()
closed = sum(closed_by_peer(s, max(0.1, 20 - (time.monotonic() - t0))) for s in idle + half)
took = time.monotonic() - t0
for s in idle + half: s.close()
print(f"20 idle RPC connections and 10 half-sent frames: {closed} closed by the server after {took:.1f} s")
assert closed == 30 and took < 19, (closed, took)

stop.set()
poller.join()
print(f"the legitimate client got {answers[0]} answers, worst {worst[0] * 1000:.0f} ms")
assert not failures, failures[:5]
assert answers[0] > 20 and worst[0] < 5, (answers[0], worst[0])
PY
ok "the coordinator held: HTTP memory bounded, slow headers closed, no smuggling, strict JSON; RPC frames bounded, idle connections closed; answers all along"
