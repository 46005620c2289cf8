// Create or edit a job: a guided form, a live preview of the VMs the
// selection matches and of the schedule's next runs (POST /jobs/preview),
// and the API's errors shown beside the field they name.
import { useEffect, useRef, useState } from 'preact/hooks';
import { api, ApiError } from '../api.js';
import { when } from '../format.js';
import { Field, ErrorBox } from '../ui.jsx';

const DAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];
const KEEPS = [['keep_last', 'Keep last'], ['keep_within_days', 'Keep all within days'], ['keep_daily', 'Keep daily'],
  ['keep_weekly', 'Keep weekly'], ['keep_monthly', 'Keep monthly'], ['keep_yearly', 'Keep yearly']];

const EMPTY = {
  name: '', repository: '', vms: '', tags: '', hosts: '', clusters: '', exclude: '',
  kind: '', at: '22:00', days: [...DAYS], hours: '6', from: '00:00', expr: '', permitted_hours: '',
  retries_count: '3', retries_interval: '600', enabled: true,
  keep_last: '', keep_within_days: '', keep_daily: '', keep_weekly: '', keep_monthly: '', keep_yearly: '',
};

const names = (s) => s.split(',').map((x) => x.trim()).filter(Boolean);

function fromJob(j) {
  const sel = j.selection || {};
  const sc = j.schedule || {};
  const f = {
    ...EMPTY, name: j.name, repository: String(j.repository), enabled: j.enabled !== false,
    vms: (sel.vms || []).join(', '), tags: (sel.tags || []).join(', '), hosts: (sel.hosts || []).join(', '),
    clusters: (sel.clusters || []).join(', '),
    exclude: (j.exclude_disks || []).map((e) => (e.vm ? e.vm + '/' + e.disk : e.disk)).join(', '),
    kind: j.schedule ? sc.kind : '', permitted_hours: sc.permitted_hours || '',
    retries_count: String(j.retries?.count ?? 3), retries_interval: String(j.retries?.interval_s ?? 600),
  };
  if (sc.kind === 'daily') { f.at = sc.at; f.days = sc.days || [...DAYS]; }
  if (sc.kind === 'every') { f.hours = String(sc.hours); f.from = sc.from || '00:00'; }
  if (sc.kind === 'cron') f.expr = sc.expr;
  for (const [k] of KEEPS) f[k] = j.retention?.[k] ? String(j.retention[k]) : '';
  return f;
}

// A number field: the API checks the range; text that is no integer is sent
// as it is so that the API's message names the field.
const int = (s) => (/^-?\d+$/.test(s.trim()) ? Number(s.trim()) : s.trim());

function selectionOf(f) {
  return { vms: names(f.vms), tags: names(f.tags), hosts: names(f.hosts), clusters: names(f.clusters) };
}
function excludeOf(f) {
  return names(f.exclude).map((e) => {
    const i = e.lastIndexOf('/');
    return i > 0 ? { vm: e.slice(0, i), disk: e.slice(i + 1) } : { disk: e };
  });
}
function scheduleOf(f) {
  let s = null;
  if (f.kind === 'daily') s = { kind: 'daily', at: f.at.trim(), days: DAYS.filter((d) => f.days.includes(d)) };
  if (f.kind === 'every') s = { kind: 'every', hours: int(f.hours), from: f.from.trim() };
  if (f.kind === 'cron') s = { kind: 'cron', expr: f.expr.trim() };
  if (s && f.permitted_hours.trim()) s.permitted_hours = f.permitted_hours.trim();
  return s;
}
function retentionOf(f) {
  const r = {};
  for (const [k] of KEEPS) if (f[k].trim()) r[k] = int(f[k]);
  return Object.keys(r).length ? r : null;
}

// The form's control for an API error's field ("selection.tags[2]" -> tags).
function controlFor(field) {
  if (!field) return null;
  const f = field.replace(/\[\d+\].*$/, '');
  const map = {
    name: 'name', repository: 'repository', enabled: 'enabled',
    'selection.vms': 'vms', 'selection.tags': 'tags', 'selection.hosts': 'hosts', 'selection.clusters': 'clusters',
    selection: 'vms', exclude_disks: 'exclude',
    schedule: 'schedule', 'schedule.kind': 'schedule', 'schedule.at': 'at', 'schedule.days': 'days',
    'schedule.hours': 'hours', 'schedule.from': 'from', 'schedule.expr': 'expr', 'schedule.permitted_hours': 'permitted_hours',
    retries: 'retries_count', 'retries.count': 'retries_count', 'retries.interval_s': 'retries_interval',
    retention: 'retention',
  };
  for (const [k] of KEEPS) map['retention.' + k] = k;
  if (map[f]) return map[f];
  const top = f.split('.')[0];
  return map[top] || null;
}

function describe(err, values) {
  const m = err.field && err.field.match(/\[(\d+)\]/);
  if (!m) return err.message;
  const c = controlFor(err.field);
  const list = c === 'exclude' ? names(values.exclude) : names(values[c] || '');
  const i = +m[1];
  return `Entry ${i + 1}${list[i] !== undefined ? ' (' + list[i] + ')' : ''}: ${err.message}`;
}

// Fallback when the coordinator has no POST /jobs/preview: the selection
// matched here against GET /vms (the same rule: any list matches).
let vmCache = null;
async function localPreview(sel, exclude) {
  if (!vmCache) vmCache = (await api.get('/vms?limit=100000')).vms;
  const set = (a) => new Set(a);
  const v = set(sel.vms), t = set(sel.tags), h = set(sel.hosts), c = set(sel.clusters);
  const vms = vmCache.filter((x) => x.state !== 'missing' &&
    (v.has(x.name) || h.has(x.host) || (x.cluster && c.has(x.cluster)) || (x.tags || []).some((y) => t.has(y))))
    .map((x) => ({ ...x, disks: x.disks.filter((d) => !exclude.some((e) => e.disk === d.name && (!e.vm || e.vm === x.name))) }));
  return { vms, vm_count: vms.length, disk_count: vms.reduce((n, x) => n + x.disks.length, 0), local: true };
}

function usePreview(f) {
  const [preview, setPreview] = useState({ state: 'idle' });
  const seq = useRef(0);
  const body = { selection: selectionOf(f), exclude_disks: excludeOf(f), schedule: scheduleOf(f) };
  const key = JSON.stringify(body);
  useEffect(() => {
    const my = ++seq.current;
    const t = setTimeout(async () => {
      const sel = body.selection;
      if (!sel.vms.length && !sel.tags.length && !sel.hosts.length && !sel.clusters.length && !body.schedule) {
        setPreview({ state: 'idle' });
        return;
      }
      setPreview((p) => ({ ...p, state: 'loading' }));
      try {
        const r = await api.post('/jobs/preview', body);
        if (my === seq.current) setPreview({ state: 'ok', data: r });
      } catch (e) {
        if (my !== seq.current) return;
        if (e.status === 404 || e.status === 405) {
          try {
            const r = await localPreview(body.selection, body.exclude_disks);
            if (my === seq.current) setPreview({ state: 'ok', data: r });
          } catch (e2) {
            if (my === seq.current) setPreview({ state: 'unavailable', error: e2 });
          }
        } else if (e.status === 400 && body.schedule && String(e.field || '').startsWith('schedule')) {
          // A schedule the API refuses: still show what the selection
          // matches, and the schedule's error in its own section.
          try {
            const r = await api.post('/jobs/preview', { selection: body.selection, exclude_disks: body.exclude_disks });
            if (my === seq.current) setPreview({ state: 'ok', data: { ...r, schedule_error: e.message } });
          } catch (e2) {
            if (my === seq.current) setPreview({ state: 'error', error: e2 });
          }
        } else {
          setPreview({ state: 'error', error: e });
        }
      }
    }, 350);
    return () => clearTimeout(t);
  }, [key]);
  return preview;
}

function Preview({ preview }) {
  const p = preview;
  let body;
  if (p.state === 'idle') body = <p class="muted">Name VMs, tags, hosts or clusters to see what the job selects.</p>;
  else if (p.state === 'unavailable') body = <p class="muted">Preview unavailable{p.error ? ': ' + p.error.message : ''}.</p>;
  else if (p.state === 'error') body = <p class="field-error">Preview: {p.error.message}{p.error.field ? ` (field ${p.error.field})` : ''}</p>;
  else if (!p.data) body = <p class="muted">Loading the preview…</p>;
  else {
    const d = p.data;
    body = (
      <>
        <p><strong data-testid="preview-count">{d.vm_count} VM{d.vm_count === 1 ? '' : 's'}</strong>, {d.disk_count} disk{d.disk_count === 1 ? '' : 's'} selected now
          {p.state === 'loading' ? <span class="muted"> (updating…)</span> : null}</p>
        {d.vms.length ? (
          <div class="table-wrap preview-vms">
            <table>
              <caption class="visually-hidden">VMs the selection matches</caption>
              <thead><tr><th scope="col">VM</th><th scope="col">Host</th><th scope="col">Tags</th><th scope="col">Disks</th></tr></thead>
              <tbody>
                {d.vms.slice(0, 200).map((v) => (
                  <tr key={v.id}><td>{v.name}</td><td>{v.host}</td><td>{(v.tags || []).join(', ')}</td>
                    <td>{(v.disks || []).map((x) => x.name || x).join(', ')}</td></tr>
                ))}
              </tbody>
            </table>
            {d.vms.length > 200 ? <p class="muted">and {d.vms.length - 200} more</p> : null}
          </div>
        ) : null}
        <h3>Schedule</h3>
        {d.schedule_error ? <p class="field-error" data-testid="preview-schedule-error">The schedule is not valid: {d.schedule_error}</p>
          : d.local ? <p class="muted">Schedule preview unavailable (the coordinator has no preview; the job's next run shows once saved).</p>
          : d.next_runs ? (
            <>
              <p>{d.schedule_description || 'manual only'}</p>
              {d.next_runs.length ? <ol class="next-runs">{d.next_runs.map((t) => <li>{when(t)}</li>)}</ol> : <p class="muted">No scheduled runs: manual only.</p>}
            </>
          ) : <p class="muted">Schedule preview unavailable.</p>}
      </>
    );
  }
  return (
    <aside class="preview" aria-labelledby="h-preview" aria-live="polite" aria-busy={p.state === 'loading' ? 'true' : 'false'}>
      <h2 id="h-preview">Preview</h2>
      {body}
    </aside>
  );
}

export function JobForm({ id }) {
  const [f, setF] = useState(EMPTY);
  const [job, setJob] = useState(null);
  const [repos, setRepos] = useState([]);
  const [errors, setErrors] = useState({});
  const [formError, setFormError] = useState(null);
  const [loadError, setLoadError] = useState(null);
  const [busy, setBusy] = useState(false);
  const [saved, setSaved] = useState('');
  const preview = usePreview(f);

  useEffect(() => {
    (async () => {
      try {
        const r = await api.get('/repositories');
        setRepos(r.repositories);
        if (id) {
          const j = await api.get('/jobs/' + id);
          setJob(j);
          setF(fromJob(j));
        } else if (r.repositories.length === 1) {
          setF((x) => ({ ...x, repository: String(r.repositories[0].id) }));
        }
      } catch (e) { setLoadError(e); }
    })();
  }, [id]);

  const set = (k) => (e) => {
    const v = e.currentTarget.type === 'checkbox' ? e.currentTarget.checked : e.currentTarget.value;
    setF((x) => ({ ...x, [k]: v }));
    const sched = ['kind', 'at', 'hours', 'from', 'expr', 'permitted_hours'].includes(k);
    setErrors((x) => ({ ...x, [k]: undefined, ...(sched ? { schedule: undefined } : {}), ...(k.startsWith('keep_') ? { retention: undefined } : {}) }));
  };
  const toggleDay = (d) => (e) => {
    const on = e.currentTarget.checked;
    setF((x) => ({ ...x, days: on ? [...x.days, d] : x.days.filter((y) => y !== d) }));
  };

  const copy = job && job.kind === 'copy';
  const submit = async (e) => {
    e.preventDefault();
    setErrors({});
    setFormError(null);
    setSaved('');
    const body = { name: f.name.trim(), repository: f.repository === '' ? undefined : int(f.repository), enabled: f.enabled };
    if (!copy) {
      body.selection = selectionOf(f);
      body.exclude_disks = excludeOf(f);
      body.retries = { count: int(f.retries_count), interval_s: int(f.retries_interval) };
    }
    const schedule = scheduleOf(f), retention = retentionOf(f);
    if (id || schedule) body.schedule = schedule;
    if (id || retention) body.retention = retention;
    setBusy(true);
    try {
      const r = id ? await api.patch('/jobs/' + id, body) : await api.post('/jobs', body);
      setJob(r);
      setSaved(id ? `Saved ${r.name}.` : `Created ${r.name}.`);
      if (!id) location.hash = '#/jobs/' + r.id;
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      let c = controlFor(err.field);
      if (!c && err.kind === 'conflict' && /name/i.test(err.message)) c = 'name';
      if (c) {
        setErrors({ [c]: describe(err, f) });
        const el = document.getElementById('job-' + c) || document.querySelector(`[data-field="job-${c}"] input, [data-field="job-${c}"] select`);
        if (el && el.focus) el.focus();
      } else setFormError(err);
    } finally {
      setBusy(false);
    }
  };

  if (loadError) return <ErrorBox error={loadError} what="Loading the job failed" />;
  if (id && !job) return <p class="muted">Loading the job…</p>;
  return (
    <div class="form-page">
      <form class="job-form" onSubmit={submit} noValidate aria-label={id ? 'Edit job' : 'New job'}>
        <ErrorBox error={formError} what="The coordinator refused the job" />
        <p role="status" class="notice-inline">{saved}</p>
        <fieldset>
          <legend>Job</legend>
          <Field id="job-name" label="Name" error={errors.name} hint="Letters, digits, space, . _ -">
            <input type="text" value={f.name} onInput={set('name')} required />
          </Field>
          <Field id="job-repository" label="Repository" error={errors.repository}>
            <select value={f.repository} onChange={set('repository')}>
              <option value="">Choose a repository</option>
              {repos.map((r) => <option value={String(r.id)}>{r.name} ({r.location})</option>)}
            </select>
          </Field>
          <div class="field check">
            <input id="job-enabled" type="checkbox" checked={f.enabled} onChange={set('enabled')} />
            <label for="job-enabled">Enabled (runs on its schedule)</label>
            {errors.enabled ? <span class="field-error" role="alert">{errors.enabled}</span> : null}
          </div>
        </fieldset>

        {copy ? <p class="muted">A copy job of job {job.source_job}: it copies that job's points; its selection is the source's.</p> : (
          <fieldset>
            <legend>Selection</legend>
            <p class="hint">A VM is backed up if it matches any list. Separate names with commas.</p>
            <Field id="job-vms" label="VM names" error={errors.vms}><input type="text" value={f.vms} onInput={set('vms')} /></Field>
            <Field id="job-tags" label="Tags" error={errors.tags}><input type="text" value={f.tags} onInput={set('tags')} /></Field>
            <Field id="job-hosts" label="Hosts" error={errors.hosts}><input type="text" value={f.hosts} onInput={set('hosts')} /></Field>
            <Field id="job-clusters" label="Clusters" error={errors.clusters}><input type="text" value={f.clusters} onInput={set('clusters')} /></Field>
            <Field id="job-exclude" label="Excluded disks" error={errors.exclude} hint="disk (on every VM) or vm/disk, comma separated">
              <input type="text" value={f.exclude} onInput={set('exclude')} />
            </Field>
          </fieldset>
        )}

        <fieldset aria-describedby={errors.schedule ? 'job-schedule-error' : undefined}>
          <legend>Schedule</legend>
          <Field id="job-schedule" label="Runs" error={errors.schedule}>
            <select value={f.kind} onChange={set('kind')}>
              <option value="">Manually only</option>
              <option value="daily">Daily at a time</option>
              <option value="every">Every N hours</option>
              <option value="cron">Cron expression</option>
            </select>
          </Field>
          {f.kind === 'daily' ? (
            <>
              <Field id="job-at" label="At (HH:MM, coordinator's local time)" error={errors.at}><input type="text" value={f.at} onInput={set('at')} /></Field>
              <fieldset class="days" aria-describedby={errors.days ? 'job-days-error' : undefined}>
                <legend>On days</legend>
                {DAYS.map((d) => (
                  <span class="day"><input type="checkbox" id={'job-day-' + d} checked={f.days.includes(d)} onChange={toggleDay(d)} /><label for={'job-day-' + d}>{d}</label></span>
                ))}
                {errors.days ? <span id="job-days-error" class="field-error" role="alert">{errors.days}</span> : null}
              </fieldset>
            </>
          ) : null}
          {f.kind === 'every' ? (
            <>
              <Field id="job-hours" label="Every (hours, 1-24)" error={errors.hours}><input type="text" inputMode="numeric" value={f.hours} onInput={set('hours')} /></Field>
              <Field id="job-from" label="From (HH:MM)" error={errors.from}><input type="text" value={f.from} onInput={set('from')} /></Field>
            </>
          ) : null}
          {f.kind === 'cron' ? (
            <Field id="job-expr" label="Cron expression (m h dom mon dow)" error={errors.expr}><input type="text" value={f.expr} onInput={set('expr')} /></Field>
          ) : null}
          {f.kind ? (
            <Field id="job-permitted_hours" label="Permitted hours (optional)" error={errors.permitted_hours} hint='e.g. 0-6,22-23'>
              <input type="text" value={f.permitted_hours} onInput={set('permitted_hours')} />
            </Field>
          ) : null}
        </fieldset>

        {copy ? null : (
          <fieldset>
            <legend>Retries</legend>
            <Field id="job-retries_count" label="Retries (0-100)" error={errors.retries_count}><input type="text" inputMode="numeric" value={f.retries_count} onInput={set('retries_count')} /></Field>
            <Field id="job-retries_interval" label="Seconds between retries" error={errors.retries_interval}><input type="text" inputMode="numeric" value={f.retries_interval} onInput={set('retries_interval')} /></Field>
          </fieldset>
        )}

        <fieldset aria-describedby={errors.retention ? 'job-retention-error' : undefined}>
          <legend>Retention</legend>
          <p class="hint">Leave all empty to keep every point.</p>
          {errors.retention ? <span id="job-retention-error" class="field-error" role="alert">{errors.retention}</span> : null}
          <div class="grid-3">
            {KEEPS.map(([k, label]) => (
              <Field id={'job-' + k} label={label} error={errors[k]}><input type="text" inputMode="numeric" value={f[k]} onInput={set(k)} /></Field>
            ))}
          </div>
        </fieldset>

        <div class="actions">
          <button type="submit" disabled={busy}>{busy ? 'Saving…' : id ? 'Save job' : 'Create job'}</button>
          <a href="#/jobs">Back to jobs</a>
          {id && job ? <JobActions job={job} onChange={setJob} /> : null}
        </div>
      </form>
      {copy ? null : <Preview preview={preview} />}
    </div>
  );
}

function JobActions({ job }) {
  const [msg, setMsg] = useState(null);
  const act = async (what) => {
    try {
      const r = await api.post(`/jobs/${job.id}/${what}`);
      setMsg({ ok: true, session: r.session, text: what === 'start' ? 'Started: session ' : 'Stopping session ' });
    } catch (e) { setMsg({ ok: false, text: e.message }); }
  };
  return (
    <span class="job-actions">
      <button type="button" onClick={() => act('start')}>Start now</button>
      <button type="button" onClick={() => act('stop')}>Stop</button>
      <span role="status">
        {msg ? (msg.ok ? <>{msg.text}<a href={'#/sessions/' + msg.session}>{msg.session}</a></> : <span class="field-error">{msg.text}</span>) : null}
      </span>
    </span>
  );
}
