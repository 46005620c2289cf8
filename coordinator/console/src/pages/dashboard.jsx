import { useEffect, useRef } from 'preact/hooks';
import { api } from '../api.js';
import { usePoll } from '../poll.js';
import { bytes, duration, when, ago } from '../format.js';
import { State, Table, Loading, link } from '../ui.jsx';

const WORKERS_MS = 15000;
let workerCount = null;

// Ended sessions do not change: their failed VMs are fetched once.
const endedSessions = new Map();

async function problemVms(jobs) {
  const bad = jobs.filter((j) => j.last_session && ['failed', 'warning'].includes(j.last_session.state)).slice(0, 10);
  const out = [];
  for (const j of bad) {
    const id = j.last_session.id;
    let s = endedSessions.get(id);
    if (!s) {
      s = await api.get('/sessions/' + id);
      endedSessions.set(id, s);
    }
    const failed = new Map();
    for (const t of s.tasks || []) if (t.state === 'failed') failed.set(t.vm, t.error);
    for (const sn of s.snapshots || []) if (sn.state === 'failed' && !failed.has(sn.vm)) failed.set(sn.vm, sn.error);
    for (const [vm, error] of failed) out.push({ vm, error, job: j, session: s });
    if (failed.size === 0) out.push({ vm: '–', error: s.reason, job: j, session: s });
  }
  return out;
}

async function load() {
  const [status, jobs, repos] = await Promise.all([
    api.get('/status'), api.get('/jobs'), api.get('/repositories'),
  ]);
  let byState = status.workers_by_state;
  if (!byState) {
    // A coordinator without workers_by_state: counted from the worker list,
    // fetched at most every WORKERS_MS (it is the dashboard's largest answer).
    if (!workerCount || Date.now() - workerCount.at > WORKERS_MS) {
      const w = await api.get('/workers?limit=100000');
      const counts = {};
      for (const x of w.workers) counts[x.state] = (counts[x.state] || 0) + 1;
      workerCount = { at: Date.now(), counts };
    }
    byState = workerCount.counts;
  }
  const problems = await problemVms(jobs.jobs);
  performance.mark('dashboard-data');
  return { status, jobs: jobs.jobs, repos: repos.repositories, byState, problems };
}

export function Dashboard() {
  const poll = usePoll(load);
  const marked = useRef(false);
  useEffect(() => {
    if (poll.data && !marked.current) {
      marked.current = true;
      performance.mark('dashboard-rendered');
    }
  }, [poll.data]);
  if (!poll.data) return <Loading poll={poll} what="the dashboard" />;
  const { status, jobs, repos, byState, problems } = poll.data;
  const next = jobs.filter((j) => j.next_run_at).sort((a, b) => a.next_run_at.localeCompare(b.next_run_at)).slice(0, 10);
  return (
    <div class="dashboard" data-ready="true">
      <Loading poll={poll} what="the dashboard" />
      <ul class="tiles" aria-label="Summary">
        <li><span class="tile-n">{status.sessions_running}</span> sessions running</li>
        <li><span class="tile-n">{status.vms}</span> VMs</li>
        <li><span class="tile-n">{status.hosts}</span> hosts</li>
        <li><span class="tile-n">{status.workers_connected}/{status.workers}</span> workers connected</li>
        <li><span class="tile-n">{status.scheduler?.queued ?? '–'}</span> work items queued</li>
      </ul>

      <section aria-labelledby="h-jobs">
        <h2 id="h-jobs">Jobs: last session</h2>
        <Table caption={null} rowKey={(j) => j.id} rows={jobs} empty="No jobs yet."
          cols={[
            { label: 'Job', cell: (j) => <a href={link('/jobs/' + j.id)}>{j.name}</a> },
            { label: 'State', cell: (j) => j.last_session ? <a href={link('/sessions/' + j.last_session.id)}><State s={j.last_session.state} /></a> : <span class="muted">never run</span> },
            { label: 'Started', cell: (j) => when(j.last_session?.started_at ?? j.last_session?.created_at) },
            { label: 'Duration', cell: (j) => j.last_session?.started_at ? duration(j.last_session.started_at, j.last_session.ended_at) : '–' },
            { label: 'Processed', num: true, cell: (j) => bytes(j.last_session?.bytes_done) },
            { label: 'Stored', num: true, cell: (j) => bytes(j.last_session?.bytes_stored) },
          ]} />
      </section>

      <div class="cols">
        <section aria-labelledby="h-problems">
          <h2 id="h-problems">Failed and warning VMs</h2>
          <Table rows={problems} empty="None: every job's last session succeeded."
            cols={[
              { label: 'VM', cell: (p) => p.vm },
              { label: 'Job', cell: (p) => <a href={link('/sessions/' + p.session.id)}>{p.job.name}</a> },
              { label: 'State', cell: (p) => <State s={p.session.state} /> },
              { label: 'Error', cell: (p) => <span class="wrap">{p.error}</span> },
            ]} />
        </section>
        <section aria-labelledby="h-next">
          <h2 id="h-next">Next scheduled runs</h2>
          <Table rows={next} empty="No job is scheduled."
            cols={[
              { label: 'Job', cell: (j) => <a href={link('/jobs/' + j.id)}>{j.name}</a> },
              { label: 'At', cell: (j) => when(j.next_run_at) },
              { label: 'In', cell: (j) => ago(j.next_run_at) },
              { label: 'Schedule', cell: (j) => j.schedule_description },
            ]} />
        </section>
      </div>

      <div class="cols">
        <section aria-labelledby="h-workers">
          <h2 id="h-workers">Workers by state</h2>
          <Table rows={Object.entries(byState).filter(([, n]) => n > 0)} empty="No workers."
            cols={[
              { label: 'State', cell: ([s]) => <a href={link('/workers')}><State s={s} /></a> },
              { label: 'Workers', num: true, cell: ([, n]) => n },
            ]} />
        </section>
        <section aria-labelledby="h-repos">
          <h2 id="h-repos">Repositories</h2>
          <Table rows={repos} rowKey={(r) => r.id} empty="No repositories."
            cols={[
              { label: 'Repository', cell: (r) => r.name },
              { label: 'Used', num: true, cell: (r) => bytes(r.space?.stored_bytes ?? r.stored_bytes) },
              { label: 'Capacity', num: true, cell: (r) => (r.capacity_bytes ? bytes(r.capacity_bytes) : '–') },
              { label: 'Points', num: true, cell: (r) => r.points },
              { label: 'Measured', cell: (r) => (r.space?.measured_at ? ago(r.space.measured_at) : '–') },
            ]} />
        </section>
      </div>
    </div>
  );
}
