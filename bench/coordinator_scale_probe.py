#!/usr/bin/env python3
"""Helper of bench/coordinator-scale.sh: talks to the coordinator's web API.

Subcommands (all print progress on stderr):
  setup   create the repository, the workers and the job; write the simworker
          workers file; print the job id on stdout
  wait    wait until every worker is connected and every VM inventoried
  run     start the job and measure until the session ends (assignment rate,
          API latency from a probe thread, coordinator RSS/CPU); write a JSON
          result file
  verify  check locality from the session's tasks and the simworker report;
          add to the result file
  summary print the table and key=value lines from the result file

Standard library only (urllib/http.client), so it runs anywhere python3 does.
"""

import argparse
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse


def log(msg):
    print(f"coordinator-scale: {msg}", file=sys.stderr, flush=True)


class Api:
    """A keep-alive connection to the API (one per thread)."""

    def __init__(self, url, token, timeout=120):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.token = token
        self.timeout = timeout
        self.conn = None

    def _connect(self):
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(self, method, path, body=None):
        """Returns (status, raw body, seconds taken). A GET is retried once on a
        dropped keep-alive connection; other methods are not (not idempotent)."""
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in range(2):
            if self.conn is None:
                self._connect()
            t0 = time.perf_counter()
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                dt = time.perf_counter() - t0
                if resp.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return resp.status, raw, dt
            except (http.client.HTTPException, ConnectionError, OSError):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt == 1 or method != "GET":
                    raise
        raise RuntimeError("unreachable")

    def call(self, method, path, body=None, ok=(200, 201, 202)):
        status, raw, _ = self.request(method, path, body)
        if status not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {raw[:300]!r}")
        return json.loads(raw) if raw else None


def proc_status(pid):
    """VmRSS and VmHWM in KiB and CPU seconds (user+sys) of a process."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0])
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        # Per thread: time on a CPU, and time runnable but waiting for one.
        run_ns = wait_ns = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    r, w, _ = f.read().split()
                run_ns += int(r)
                wait_ns += int(w)
            except (OSError, ValueError):
                pass
        out["run_s"], out["runqueue_wait_s"] = run_ns / 1e9, wait_ns / 1e9
    except OSError:
        pass
    return out


def alive(pid):
    """True while `pid` runs (a zombie, i.e. exited but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


# --- setup ---------------------------------------------------------------------

def cmd_setup(a):
    api = Api(a.api, a.token)
    repo = api.call("POST", "/api/v1/repositories",
                    {"name": "bench", "location": a.repo_location, "task_slots": a.repo_slots})
    log(f"repository {repo['id']} with {repo['task_slots']} task slots")
    t0 = time.perf_counter()
    per, extra = divmod(a.vms, a.workers)
    specs, vm_index = [], 0
    for i in range(a.workers):
        w = api.call("POST", "/api/v1/workers", {"name": f"w{i}"})
        vms = []
        for _ in range(per + (1 if i < extra else 0)):
            vms.append({"name": f"vm{vm_index}", "uuid": f"00000000-0000-4000-8000-{vm_index:012d}",
                        "tags": ["bench"],
                        "disks": [{"name": f"vd{chr(ord('a') + d)}" if d < 26 else f"disk{d}",
                                   "size": 1 << 30, "format": "qcow2"} for d in range(a.disks)]})
            vm_index += 1
        specs.append({"token": w["token"], "host": f"h{i}", "platform": "libvirt",
                      "cluster": f"c{i % a.clusters}", "slots": a.slots, "vms": vms})
    log(f"created {a.workers} workers in {time.perf_counter() - t0:.1f} s")
    tmp = a.workers_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(specs, f)
    os.rename(tmp, a.workers_file)
    job = api.call("POST", "/api/v1/jobs",
                   {"name": "bench", "repository": repo["id"], "selection": {"tags": ["bench"]},
                    "retries": {"count": 0, "interval_s": 0}})
    print(job["id"])


# --- wait ----------------------------------------------------------------------

def cmd_wait(a):
    api = Api(a.api, a.token)
    t0 = time.monotonic()
    last = None
    while True:
        s = api.call("GET", "/api/v1/status")
        now = (s["workers_connected"], s["vms"])
        if now != last:
            log(f"{s['workers_connected']}/{a.workers} workers connected, {s['vms']}/{a.vms} VMs inventoried")
            last = now
        if s["workers_connected"] >= a.workers and s["vms"] >= a.vms:
            break
        if time.monotonic() - t0 > a.timeout:
            raise SystemExit(f"coordinator-scale: workers not ready after {a.timeout} s: {s}")
        if a.sim_pid and not alive(a.sim_pid):
            raise SystemExit("coordinator-scale: ferry-simworker exited before the workers were ready")
        time.sleep(0.2)
    ready_s = time.monotonic() - t0
    log(f"ready after {ready_s:.1f} s")
    if a.out:
        with open(a.out + ".wait", "w") as f:
            json.dump({"ready_s": ready_s}, f)


# --- run -----------------------------------------------------------------------

PROBE_PATHS = ["/api/v1/status", "/api/v1/jobs", "/api/v1/workers?limit=100", "/api/v1/sessions?limit=10"]


class Probe(threading.Thread):
    """Issues GETs in a loop (pausing `interval` s between them), recording latency."""

    def __init__(self, api, interval):
        super().__init__(daemon=True)
        self.api, self.interval = api, interval
        self.stop = threading.Event()
        self.samples = {p: [] for p in PROBE_PATHS}
        self.worst = {p: (0.0, 0.0) for p in PROBE_PATHS}  # (latency, wall-clock time it started)
        self.errors = []

    def run(self):
        i = 0
        while not self.stop.is_set():
            path = PROBE_PATHS[i % len(PROBE_PATHS)]
            i += 1
            try:
                t0 = time.time()
                status, raw, dt = self.api.request("GET", path)
                if status != 200:
                    self.errors.append(f"{path}: HTTP {status}")
                else:
                    self.samples[path].append(dt)
                    if dt > self.worst[path][0]:
                        self.worst[path] = (dt, t0)
            except Exception as e:  # noqa: BLE001 - a failed probe is a finding, not a crash
                self.errors.append(f"{path}: {e}")
            if self.interval > 0:
                self.stop.wait(self.interval)


def cmd_run(a):
    api = Api(a.api, a.token)
    before = proc_status(a.pid)
    probe = Probe(Api(a.api, a.token), a.probe_interval_ms / 1000.0)
    status0 = api.call("GET", "/api/v1/status")
    made0 = status0["scheduler"]["assignments_made"]
    expected_disks = a.vms * a.disks
    probe.start()
    time.sleep(0.5)  # the probe's baseline before the start
    load0 = os.getloadavg()
    t_start = time.time()
    session = api.call("POST", f"/api/v1/jobs/{a.job}/start")["session"]
    t_started = time.time()
    log(f"session {session} started (POST took {1000 * (t_started - t_start):.0f} ms)")
    t_all_assigned = None
    timeline = []  # (t, assignments_made, assigned disk tasks, succeeded)
    rss_peak_sampled = 0
    state = "running"
    last_log = last_totals = 0.0
    tot = None
    while True:
        now = time.time()
        # Cheap: the job (its last session's state) and the scheduler counters,
        # every poll; the session's totals (8 COUNTs over its tasks) once a
        # second, so that the bench's own polling stays light.
        s = api.call("GET", "/api/v1/status")
        made = s["scheduler"]["assignments_made"] - made0
        last = api.call("GET", f"/api/v1/jobs/{a.job}")["last_session"]
        state = last["state"] if last and last["id"] == session else "running"
        if tot is None or now - last_totals >= 1.0 or state not in ("running", "stopping"):
            sess = api.call("GET", f"/api/v1/sessions?job={a.job}&limit=1")["sessions"][0]
            tot = sess["totals"]
            last_totals = now
            assigned = tot["running"] + tot["succeeded"] + tot["failed"]
            timeline.append((round(now - t_start, 3), made, assigned, tot["succeeded"]))
            if t_all_assigned is None and tot["tasks"] >= expected_disks and tot["queued"] == 0:
                t_all_assigned = now
                log(f"all {assigned} disk tasks assigned after {now - t_start:.2f} s (poll)")
        ps = proc_status(a.pid)
        rss_peak_sampled = max(rss_peak_sampled, ps.get("VmRSS", 0))
        if now - last_log >= 5:
            log(f"t={now - t_start:6.1f}s made={made} disk assigned={assigned}/{tot['tasks']} "
                f"succeeded={tot['succeeded']} running={tot['running']} queued={tot['queued']} "
                f"rss={ps.get('VmRSS', 0) // 1024} MiB")
            last_log = now
        if state not in ("running", "stopping"):
            break
        if now - t_start > a.timeout:
            log(f"session still {state} after {a.timeout} s: giving up")
            state = "timeout"
            break
        if not os.path.exists(f"/proc/{a.pid}"):
            state = "coordinator-died"
            break
        if a.sim_pid and not alive(a.sim_pid):
            log("ferry-simworker exited while the session was running")
            state = "simworker-died"
            break
        time.sleep(a.poll_ms / 1000.0)
    t_end = time.time()
    time.sleep(0.5)  # the probe's tail after the end
    probe.stop.set()
    probe.join()
    load1 = os.getloadavg()
    after = proc_status(a.pid)
    s = api.call("GET", "/api/v1/status")
    sess = api.call("GET", f"/api/v1/sessions?job={a.job}&limit=1")["sessions"][0]
    all_lat = sorted(x for v in probe.samples.values() for x in v)
    lat = {"all": all_lat}
    lat.update({p: sorted(v) for p, v in probe.samples.items()})
    result = {
        "session": session, "state": state, "session_reason": sess["reason"], "totals": sess["totals"],
        "t_start": t_start, "t_end": t_end,
        "start_post_s": t_started - t_start,
        "all_assigned_poll_s": (t_all_assigned - t_start) if t_all_assigned else None,
        "session_s": t_end - t_start,
        "assignments_made": s["scheduler"]["assignments_made"] - made0,
        "latency_ms": {p: {"n": len(v), "p50": 1000 * percentile(v, 50), "p99": 1000 * percentile(v, 99),
                            "max": 1000 * (v[-1] if v else float("nan"))} for p, v in lat.items()},
        "probe_errors": probe.errors[:20], "probe_error_count": len(probe.errors),
        "latency_worst_at_s": {p: round(w[1] - t_start, 2) for p, w in probe.worst.items() if w[0] > 0},
        "rss_sampled_peak_kib": rss_peak_sampled, "vm_hwm_kib": after.get("VmHWM", 0),
        "vm_rss_end_kib": after.get("VmRSS", 0),
        "coordinator_cpu_s": after.get("cpu_s", 0) - before.get("cpu_s", 0),
        "coordinator_runqueue_wait_s": after.get("runqueue_wait_s", 0) - before.get("runqueue_wait_s", 0),
        "loadavg_before": load0, "loadavg_after": load1,
        "timeline": timeline,
    }
    with open(a.out, "w") as f:
        json.dump(result, f)
    log(f"session {session} {state} after {t_end - t_start:.2f} s: {sess['reason']}")
    if state in ("timeout", "coordinator-died", "simworker-died"):
        sys.exit(1)


# --- verify --------------------------------------------------------------------

def cmd_verify(a):
    with open(a.out) as f:
        r = json.load(f)
    api = Api(a.api, a.token, timeout=600)
    t0 = time.perf_counter()
    session = api.call("GET", f"/api/v1/sessions/{r['session']}")
    r["get_session_full_s"] = time.perf_counter() - t0
    workers = {w["id"]: w for w in api.call("GET", "/api/v1/workers?limit=100000")["workers"]}
    t0 = time.perf_counter()
    vms = {v["name"]: v for v in api.call("GET", "/api/v1/vms?limit=100000")["vms"]}
    r["list_vms_s"] = time.perf_counter() - t0
    tiers, bad_reason, wrong_host, unassigned = {}, [], [], 0
    states = {}
    for t in session["tasks"]:
        states[t["state"]] = states.get(t["state"], 0) + 1
        tier = t["tier"]
        tiers[tier or "none"] = tiers.get(tier or "none", 0) + 1
        if t["worker_id"] is None:
            unassigned += 1
            continue
        w_host = workers.get(t["worker_id"], {}).get("host")
        vm_host = vms.get(t["vm"], {}).get("host")
        if tier == "host":
            if w_host != vm_host:
                wrong_host.append(f"task {t['id']} ({t['vm']}/{t['disk']}): tier host but worker on {w_host}, VM on {vm_host}")
        else:
            reason = t["tier_reason"] or ""
            if not (f"host {vm_host} busy" in reason or f"host {vm_host} unreachable" in reason
                    or f"no worker on host {vm_host}" in reason):
                bad_reason.append(f"task {t['id']} ({t['vm']}/{t['disk']}) tier {tier} on worker {t['worker_id']} "
                                  f"({w_host}), VM on {vm_host}: reason {reason!r}")
    r["task_states"] = states
    r["tasks_reassigned"] = sum(1 for t in session["tasks"] if t["attempt"] > 1)
    if a.coordinator_log:
        try:
            with open(a.coordinator_log, errors="replace") as f:
                text = f.read()
            r["log_unreachable"] = text.count(" unreachable: ")
            r["log_registered"] = text.count(" registered: host ")
        except OSError:
            pass
    r["tiers"] = tiers
    r["tasks"] = len(session["tasks"])
    r["snapshots"] = len(session["snapshots"])
    r["locality_wrong_host"] = len(wrong_host)
    r["locality_bad_reason"] = len(bad_reason)
    r["locality_unassigned"] = unassigned
    r["locality_examples"] = (wrong_host + bad_reason)[:10]

    # The simulator's view: slots never exceeded, and exact assignment times.
    over, per_kind = [], {}
    first_disk = last_disk = None
    disk_starts, item_starts = [], []
    try:
        with open(a.report) as f:
            rep = json.load(f)
    except (OSError, ValueError) as e:
        rep = None
        r["report_error"] = str(e)
    if rep is not None:
        for w in rep["workers"]:
            if w["max_concurrent_disk_tasks"] > w["slots"]:
                over.append(f"{w['host']}: {w['max_concurrent_disk_tasks']} > {w['slots']}")
            for it in w["items"]:
                if it.get("session_id") != r["session"]:
                    continue
                per_kind[it["kind"]] = per_kind.get(it["kind"], 0) + 1
                item_starts.append(it["start_ms"])
                if it["kind"] == "disk":
                    disk_starts.append(it["start_ms"])
        r["report_totals"] = rep["totals"]
        r["registrations"] = sum(w.get("registrations", 0) for w in rep["workers"])
        r["report_items_by_kind"] = per_kind
        r["snapshots_retaken"] = per_kind.get("snapshot", 0) - len(session["snapshots"])
        r["disk_items_extra"] = per_kind.get("disk", 0) - len(session["tasks"])
        r["slots_exceeded"] = over[:10]
        r["slots_exceeded_count"] = len(over)
        r["max_concurrent_disk_tasks"] = rep["totals"]["max_concurrent_disk_tasks"]
        t_start_ms = r["t_start"] * 1000
        if disk_starts:
            disk_starts.sort()
            item_starts.sort()
            first_disk, last_disk = disk_starts[0], disk_starts[-1]
            r["first_disk_assigned_s"] = (first_disk - t_start_ms) / 1000
            r["all_disks_assigned_s"] = (last_disk - t_start_ms) / 1000
            r["last_item_s"] = (item_starts[-1] - t_start_ms) / 1000
            # Best one-second window of disk assignments (the scheduler's burst rate).
            best, j = 0, 0
            for i in range(len(disk_starts)):
                while disk_starts[i] - disk_starts[j] >= 1000:
                    j += 1
                best = max(best, i - j + 1)
            r["disk_assign_peak_1s"] = best
    with open(a.out, "w") as f:
        json.dump(r, f)
    for line in r["locality_examples"]:
        log("locality: " + line)
    for line in over[:10]:
        log("slots exceeded: " + line)


# --- summary -------------------------------------------------------------------

def cmd_summary(a):
    with open(a.out) as f:
        r = json.load(f)
    disks = a.vms * a.disks
    rows = []

    def row(name, value, target=""):
        rows.append((name, value, target))

    def rate(n, s):
        return n / s if s and s > 0 else float("nan")

    all_assigned = r.get("all_disks_assigned_s") or r.get("all_assigned_poll_s")
    disk_rate = rate(disks, all_assigned)
    items_rate = rate(r["assignments_made"], r.get("last_item_s") or r["session_s"])
    lat = r["latency_ms"]
    hwm = r["vm_hwm_kib"] / 1024
    print(f"{a.workers} workers on {a.workers} hosts in {a.clusters} clusters, {a.vms} VMs x {a.disks} disks, "
          f"{a.slots} slots per worker, repository {a.repo_slots} slots, disk task {a.task_ms} ms")
    try:
        with open(a.out + ".wait") as f:
            ready_s = json.load(f)["ready_s"]
    except (OSError, ValueError, KeyError):
        ready_s = float("nan")
    row("workers connected and VMs inventoried", f"{ready_s:.1f} s after ferry-simworker started")
    row("session", f"{r['session']} {r['state']}: {r['session_reason']}")
    row("disk tasks (session)", f"{r.get('tasks')} ({', '.join(f'{k} {v}' for k, v in sorted(r.get('task_states', {}).items()))})")
    row("work items handed out", f"{r['assignments_made']} (snapshots + disks + releases, incl. retries)")
    row("first disk task assigned", f"{r.get('first_disk_assigned_s', float('nan')):.2f} s after start")
    row("all disk tasks assigned", f"{all_assigned:.2f} s (poll: {r.get('all_assigned_poll_s') or float('nan'):.2f} s)")
    row("disk-task assignments/s", f"{disk_rate:.0f} (best 1 s window: {r.get('disk_assign_peak_1s', 0)})", ">= 2000")
    row("work items/s (until the last hand-out)", f"{items_rate:.0f}")
    row("session wall time", f"{r['session_s']:.2f} s (floor: {disks} tasks x {a.task_ms} ms / "
                             f"{min(a.workers * a.slots, a.repo_slots)} slots = "
                             f"{disks * a.task_ms / 1000 / min(a.workers * a.slots, a.repo_slots):.2f} s)")
    row("locality: tasks by tier", ", ".join(f"{k} {v}" for k, v in sorted(r.get("tiers", {}).items())),
        "host unless busy")
    row("locality: tier host on another host / off-host without busy reason",
        f"{r.get('locality_wrong_host')} / {r.get('locality_bad_reason')}", "0 / 0")
    row("max concurrent disk tasks per worker (simworker)",
        f"{r.get('max_concurrent_disk_tasks')} (workers over their slots: {r.get('slots_exceeded_count')})", f"<= {a.slots}")
    row("API GET p50 / p99 / max (all probes)",
        f"{lat['all']['p50']:.1f} / {lat['all']['p99']:.1f} / {lat['all']['max']:.1f} ms, n={lat['all']['n']}", "p99 < 50 ms")
    worst_at = r.get("latency_worst_at_s", {})
    for p in PROBE_PATHS:
        l = lat.get(p)
        if l and l["n"]:
            at = f", max at t={worst_at[p]:.1f} s" if p in worst_at else ""
            row(f"  {p}", f"{l['p50']:.1f} / {l['p99']:.1f} / {l['max']:.1f} ms, n={l['n']}{at}")
    row("API probe errors", str(r["probe_error_count"]))
    rt = r.get("report_totals", {})
    row("worker health: registrations / workers",
        f"{r.get('registrations')} / {a.workers} (coordinator log: {r.get('log_unreachable')} unreachable, "
        f"{r.get('log_registered')} registrations)", "= workers")
    row("results rejected / items cancelled / dropped (simworker)",
        f"{rt.get('rejected')} / {rt.get('cancelled')} / {rt.get('dropped')}", "0 / 0 / 0")
    row("disk tasks reassigned / snapshots taken again", f"{r.get('tasks_reassigned')} / {r.get('snapshots_retaken')}", "0 / 0")
    row("coordinator peak RSS (VmHWM)", f"{hwm:.0f} MiB (end of run: {r['vm_rss_end_kib'] / 1024:.0f} MiB)", "< 512 MiB")
    row("coordinator CPU during the session", f"{r['coordinator_cpu_s']:.1f} s "
                                              f"({100 * r['coordinator_cpu_s'] / r['session_s']:.0f}% of one core); "
                                              f"its threads waited {r.get('coordinator_runqueue_wait_s', 0):.1f} s for a CPU")
    if r["assignments_made"]:
        row("coordinator CPU per work item", f"{1000 * r['coordinator_cpu_s'] / r['assignments_made']:.2f} ms")
    row("load average before / after", f"{r['loadavg_before'][0]:.2f} / {r['loadavg_after'][0]:.2f}")
    if "get_session_full_s" in r:
        row("GET /sessions/{id} with all tasks (after)", f"{1000 * r['get_session_full_s']:.0f} ms")
    w = max(len(x[0]) for x in rows)
    v = max(len(x[1]) for x in rows)
    print(f"{'measure':<{w}} | {'value':<{v}} | target")
    print(f"{'-' * w}-+-{'-' * v}-+-------")
    for name, value, target in rows:
        print(f"{name:<{w}} | {value:<{v}} | {target}")
    kv = {
        "workers": a.workers, "vms": a.vms, "disks_per_vm": a.disks, "slots": a.slots, "task_ms": a.task_ms,
        "session_state": r["state"], "all_disks_assigned_s": round(all_assigned, 3) if all_assigned else None,
        "disk_assignments_per_s": round(disk_rate), "work_items_per_s": round(items_rate),
        "session_s": round(r["session_s"], 3),
        "api_p50_ms": round(lat["all"]["p50"], 1), "api_p99_ms": round(lat["all"]["p99"], 1),
        "api_max_ms": round(lat["all"]["max"], 1), "rss_hwm_mib": round(hwm),
        "tier_host": r.get("tiers", {}).get("host", 0), "tier_cluster": r.get("tiers", {}).get("cluster", 0),
        "tier_any": r.get("tiers", {}).get("any", 0),
        "locality_violations": (r.get("locality_wrong_host") or 0) + (r.get("locality_bad_reason") or 0),
        "slots_exceeded": r.get("slots_exceeded_count"),
        "coordinator_cpu_s": round(r["coordinator_cpu_s"], 1),
        "coordinator_runqueue_wait_s": round(r.get("coordinator_runqueue_wait_s", 0), 1),
        "ready_s": round(ready_s, 1), "registrations": r.get("registrations"),
        "tasks_reassigned": r.get("tasks_reassigned"),
    }
    for k, val in kv.items():
        print(f"{k}={val}")
    failed = []
    if r["state"] != "succeeded":
        failed.append(f"session {r['state']}")
    if r.get("tasks") != disks:
        failed.append(f"{r.get('tasks')} disk tasks, expected {disks}")
    if r.get("report_error"):
        failed.append("no simworker report: " + r["report_error"])
    if failed:
        log("run failed: " + "; ".join(failed))
        sys.exit(1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["setup", "wait", "run", "verify", "summary"])
    p.add_argument("--api", required=True)
    p.add_argument("--token", default=os.environ.get("FERRY_TOKEN", ""))
    p.add_argument("--workers", type=int, default=1000)
    p.add_argument("--clusters", type=int, default=50)
    p.add_argument("--vms", type=int, default=10000)
    p.add_argument("--disks", type=int, default=2)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--repo-slots", type=int, default=1024)
    p.add_argument("--repo-location", default="/var/tmp/ferry-bench-repo")
    p.add_argument("--task-ms", type=int, default=100)
    p.add_argument("--workers-file")
    p.add_argument("--job", type=int)
    p.add_argument("--pid", type=int, help="the coordinator's pid")
    p.add_argument("--sim-pid", type=int)
    p.add_argument("--report", help="the simworker report")
    p.add_argument("--coordinator-log")
    p.add_argument("--out", help="result file (JSON)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--poll-ms", type=int, default=100)
    p.add_argument("--probe-interval-ms", type=int, default=50)
    a = p.parse_args()
    {"setup": cmd_setup, "wait": cmd_wait, "run": cmd_run, "verify": cmd_verify, "summary": cmd_summary}[a.command](a)


if __name__ == "__main__":
    main()
