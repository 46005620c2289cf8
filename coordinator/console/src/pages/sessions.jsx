// Sessions: the list, and one session live: progress, its tasks (with
// locality tier and statistics), the bottleneck and the log.
import { useEffect, useRef, useState } from 'preact/hooks';
import { api } from '../api.js';
import { usePoll } from '../poll.js';
import { bytes, rate, when, duration, pct, span } from '../format.js';
import { State, Table, Loading, ErrorBox, link } from '../ui.jsx';

const ENDED = ['succeeded', 'warning', 'failed', 'stopped'];

export function Sessions() {
  const [kind, setKind] = useState('all');
  const poll = usePoll(() => api.get('/sessions?limit=100&kind=' + kind), [kind]);
  return (
    <>
      <div class="field inline">
        <label for="sessions-kind">Kind</label>
        <select id="sessions-kind" value={kind} onChange={(e) => setKind(e.currentTarget.value)}>
          {['all', 'backup', 'restore', 'check', 'copy'].map((k) => <option value={k}>{k}</option>)}
        </select>
      </div>
      <Loading poll={poll} what="sessions" />
      {poll.data ? (
        <Table rowKey={(s) => s.id} rows={poll.data.sessions} empty="No sessions."
          cols={[
            { label: 'Session', cell: (s) => <a href={link('/sessions/' + s.id)}>#{s.id}</a> },
            { label: 'Kind', cell: (s) => s.kind },
            { label: 'Job', cell: (s) => s.job || '–' },
            { label: 'State', cell: (s) => <State s={s.state} /> },
            { label: 'Trigger', cell: (s) => s.trigger },
            { label: 'Started', cell: (s) => when(s.created_at) },
            { label: 'Duration', cell: (s) => duration(s.created_at, s.ended_at) },
            { label: 'Progress', cell: (s) => s.totals ? `${s.totals.succeeded}/${s.totals.tasks} tasks, ${bytes(s.totals.bytes_done)}` : '–' },
            { label: 'Reason', cell: (s) => <span class="wrap">{s.reason}</span> },
          ]} />
      ) : null}
    </>
  );
}

let workerCache = null;
async function workers() {
  if (!workerCache) {
    const w = await api.get('/workers?limit=100000');
    workerCache = new Map(w.workers.map((x) => [x.id, x]));
  }
  return workerCache;
}

export function Session({ id }) {
  const log = useRef({ entries: [], last: 0, total: 0 });
  const final = useRef(null);
  const full = useRef(null);
  const poll = usePoll(async () => {
    if (final.current) return final.current;
    // A big running session: its progress from the session list (totals and
    // state, no tasks) every poll, its tasks (megabytes) every FULL_MS.
    let s = null;
    const prev = full.current;
    if (prev && prev.s.tasks.length > BIG_SESSION && prev.s.job_id && Date.now() - prev.at < FULL_MS) {
      const l = await api.get(`/sessions?job=${prev.s.job_id}&kind=${prev.s.kind}&limit=20`);
      const lite = l.sessions.find((x) => x.id === id);
      if (lite && !ENDED.includes(lite.state)) s = { ...prev.s, ...lite, tasksAt: prev.at };
    }
    if (!s) {
      s = await api.get('/sessions/' + id);
      full.current = { s, at: Date.now() };
    }
    // The log is followed with after= (only new lines); the page keeps and
    // shows the last LOG_LINES of it.
    const l = await api.get(`/sessions/${id}/log?limit=100000&after=${log.current.last}`);
    if (l.log.length) {
      log.current.last = l.log[l.log.length - 1].id;
      log.current.total += l.log.length;
      log.current.entries = log.current.entries.concat(l.log).slice(-LOG_LINES);
    }
    let w = workerCache;
    if (!w || s.tasks.some((t) => t.worker_id && !w.has(t.worker_id))) { workerCache = null; w = await workers(); }
    const data = { s, log: log.current.entries, logTotal: log.current.total, workers: w };
    if (!final.current && !log.current.marked) { log.current.marked = true; performance.mark('session-data'); }
    if (ENDED.includes(s.state) && (!s.lifecycle || s.lifecycle.state !== 'pending')) final.current = data;
    return data;
  }, [id], 2000);
  const [stopError, setStopError] = useState(null);
  const [filter, setFilter] = useState('all');
  const marked = useRef(false);
  useEffect(() => {
    if (poll.data && !marked.current) { marked.current = true; performance.mark('session-rendered'); }
  }, [poll.data]);

  if (!poll.data) return <Loading poll={poll} what={'session ' + id} />;
  const { s, workers: wk } = poll.data;
  const t = s.totals || {};
  const running = !ENDED.includes(s.state);
  const stop = async () => {
    setStopError(null);
    try { await api.post(`/sessions/${id}/stop`); poll.refresh(); } catch (e) { setStopError(e); }
  };
  // A session of thousands of disks: the table shows a page of them, filtered by state.
  const matching = (s.tasks || []).filter((x) => filter === 'all' || x.state === filter);
  const shown = matching.slice(0, TASK_ROWS);
  const eta = running && t.rate_bytes_per_s > 0 ? (t.bytes_total - t.bytes_done) / t.rate_bytes_per_s : null;
  return (
    <div class="session">
      <Loading poll={poll} what="the session" />
      <section aria-labelledby="h-summary" class="summary">
        <h2 id="h-summary" class="visually-hidden">Summary</h2>
        <p class="session-state">
          <State s={s.state} /> {s.kind} session of {s.job ? <a href={link('/jobs/' + s.job_id)}>{s.job}</a> : 'no job'} ({s.trigger}),
          started {when(s.created_at)}, {running ? 'running for ' : 'took '}{duration(s.created_at, s.ended_at)}
          {running ? <button type="button" class="inline-button" onClick={stop}>Stop session</button> : null}
        </p>
        <ErrorBox error={stopError} what="Stop" />
        {s.reason ? <p class="reason">{s.reason}</p> : null}
        {t.tasks !== undefined && s.kind !== 'copy' ? (
          <div class="progress">
            <label for="session-progress">Progress: {bytes(t.bytes_done)} of {bytes(t.bytes_total)} ({pct(t.bytes_done, t.bytes_total)}%)</label>
            <progress id="session-progress" max={t.bytes_total || 1} value={t.bytes_done || 0} />
            <p class="muted">{t.succeeded} succeeded, {t.running} running, {t.queued} queued, {t.failed} failed, {t.canceled} canceled of {t.tasks} tasks
              {running ? ` · ${rate(t.rate_bytes_per_s)}` : ''}{eta !== null ? ` · about ${span(eta)} left` : ''}</p>
          </div>
        ) : null}
      </section>

      {s.stats ? <Bottleneck stats={s.stats} /> : null}

      <section aria-labelledby="h-tasks">
        <h2 id="h-tasks">Tasks</h2>
        {s.tasksAt ? <p class="muted">A session of {s.tasks.length} tasks: its tasks as of {when(new Date(s.tasksAt).toISOString())}, refreshed every {FULL_MS / 1000} s; the progress above is live.</p> : null}
        <TaskFilter tasks={s.tasks || []} filter={filter} setFilter={setFilter} shown={shown.length} />
        <Table rowKey={(x) => x.id} rows={shown} empty="No tasks."
          cols={[
            { label: 'VM', cell: (x) => x.vm },
            { label: 'Disk', cell: (x) => x.disk ?? 'whole VM' },
            { label: 'Worker', cell: (x) => (x.worker_id ? wk.get(x.worker_id)?.name ?? '#' + x.worker_id : '–') },
            { label: 'Host', cell: (x) => (x.worker_id ? wk.get(x.worker_id)?.host ?? '–' : '–') },
            { label: 'Tier', cell: (x) => (x.tier ? <span title={x.tier_reason}>{x.tier}</span> : '–') },
            { label: 'Reason', cell: (x) => <span class="wrap">{x.tier_reason ?? '–'}</span> },
            { label: 'State', cell: (x) => <><State s={x.state} />{x.attempt > 1 ? <span class="muted"> (attempt {x.attempt})</span> : null}</> },
            { label: 'Done', num: true, cell: (x) => `${bytes(x.bytes_done)} / ${bytes(x.bytes_total)}` },
            { label: 'Stored', num: true, cell: (x) => bytes(x.bytes_stored) },
            { label: 'Rate', num: true, cell: (x) => rate(x.rate_bytes_per_s) },
            { label: 'Bottleneck', cell: (x) => x.bottleneck ?? '–' },
            { label: 'Error', cell: (x) => <span class="wrap">{x.error}</span> },
          ]} />
      </section>

      {s.snapshots && s.snapshots.length ? (
        <section aria-labelledby="h-snapshots">
          <h2 id="h-snapshots">Snapshots</h2>
          {s.snapshots.length > TASK_ROWS ? <p class="muted">The first {TASK_ROWS} of {s.snapshots.length} snapshots, those not released first.</p> : null}
          <Table rowKey={(x) => x.id} rows={firstSnapshots(s.snapshots)}
            cols={[
              { label: 'VM', cell: (x) => x.vm },
              { label: 'State', cell: (x) => <State s={x.state} /> },
              { label: 'Worker', cell: (x) => (x.worker_id ? wk.get(x.worker_id)?.name ?? '#' + x.worker_id : '–') },
              { label: 'Tier', cell: (x) => x.tier ?? '–' },
              { label: 'Point', cell: (x) => x.point_id ? <a href={link('/points?vm=' + encodeURIComponent(x.vm))}>{x.point_id}</a> : '–' },
              { label: 'Error', cell: (x) => <span class="wrap">{x.error}</span> },
            ]} />
        </section>
      ) : null}

      <section aria-labelledby="h-log">
        <h2 id="h-log">Log</h2>
        {poll.data.logTotal > poll.data.log.length ? <p class="muted">The last {poll.data.log.length} of {poll.data.logTotal} lines.</p> : null}
        <ol class="log" aria-label="Session log" tabIndex={0}>
          {poll.data.log.map((e) => (
            <li key={e.id} class={'log-' + e.level}><time dateTime={e.at}>{when(e.at)}</time> <span class="log-level">{e.level}</span> {e.message}</li>
          ))}
        </ol>
      </section>
    </div>
  );
}

const TASK_ROWS = 500;
// A running session of more tasks gets its task list every 30 s (its answer
// is megabytes), its progress every poll.
const BIG_SESSION = 2000;
const FULL_MS = 30000;
const firstSnapshots = (list) => (list.length <= TASK_ROWS ? list
  : list.filter((x) => x.state !== 'released').concat(list.filter((x) => x.state === 'released')).slice(0, TASK_ROWS));
const LOG_LINES = 1000;
const TASK_STATES = ['all', 'running', 'queued', 'waiting', 'failed', 'succeeded', 'canceled'];

function TaskFilter({ tasks, filter, setFilter, shown }) {
  if (tasks.length <= 20) return null;
  const counts = { all: tasks.length };
  for (const x of tasks) counts[x.state] = (counts[x.state] || 0) + 1;
  const count = (st) => counts[st] || 0;
  const n = count(filter);
  return (
    <div class="field inline">
      <label for="tasks-filter">Show tasks</label>
      <select id="tasks-filter" value={filter} onChange={(e) => setFilter(e.currentTarget.value)}>
        {TASK_STATES.map((st) => <option value={st}>{st} ({count(st)})</option>)}
      </select>
      {n > shown ? <span class="muted">the first {shown} of {n}</span> : null}
    </div>
  );
}

function Bottleneck({ stats }) {
  const stages = ['source', 'compute', 'network', 'target'];
  return (
    <section aria-labelledby="h-bottleneck">
      <h2 id="h-bottleneck">Bottleneck: <span class="bottleneck">{stats.bottleneck ?? 'not measured'}</span></h2>
      <p class="muted">Read {bytes(stats.bytes_read)}, sent {bytes(stats.bytes_sent)}, stored {bytes(stats.bytes_stored)}; {stats.tasks_measured} task(s) measured.</p>
      {stats.busy ? (
        <dl class="busy">
          {stages.map((st) => (
            <div class={st === stats.bottleneck ? 'busy-row busiest' : 'busy-row'}>
              <dt>{st}</dt>
              <dd>{stats.busy[st] === null ? <span class="muted">not measured</span> : (
                <><meter min={0} max={100} value={stats.busy[st]} aria-label={st + ' busy'} /> {stats.busy[st].toFixed(0)}% busy</>)}</dd>
            </div>
          ))}
        </dl>
      ) : null}
    </section>
  );
}
