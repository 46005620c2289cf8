// Restore points by VM, with their size and last check, and restores
// (POST /restores) from any of them.
import { useEffect, useState } from 'preact/hooks';
import { api } from '../api.js';
import { usePoll } from '../poll.js';
import { bytes, when } from '../format.js';
import { State, Loading, Field, ErrorBox, link } from '../ui.jsx';

const vmFromHash = () => new URLSearchParams(location.hash.split('?')[1] || '').get('vm') || '';

export function Points() {
  const [typed, setTyped] = useState(vmFromHash());
  const [vm, setVm] = useState(typed);
  useEffect(() => { const t = setTimeout(() => setVm(typed), 300); return () => clearTimeout(t); }, [typed]);
  const [restoring, setRestoring] = useState(null);
  const poll = usePoll(async () => {
    const [p, h] = await Promise.all([
      api.get('/points?limit=1000' + (vm ? '&vm=' + encodeURIComponent(vm) : '')),
      api.get('/hosts'),
    ]);
    return { points: p.points, hosts: h.hosts };
  }, [vm], 5000);

  const byVm = new Map();
  for (const p of poll.data?.points || []) {
    if (!byVm.has(p.vm)) byVm.set(p.vm, []);
    byVm.get(p.vm).push(p);
  }
  return (
    <>
      <form class="field inline" role="search" onSubmit={(e) => e.preventDefault()}>
        <label for="points-vm">VM name</label>
        <input id="points-vm" type="search" value={typed} onInput={(e) => setTyped(e.currentTarget.value.trim())} />
      </form>
      <Loading poll={poll} what="restore points" />
      {poll.data && byVm.size === 0 ? <p class="muted">No restore points{vm ? ' for ' + vm : ''}.</p> : null}
      {[...byVm].map(([name, points]) => (
        <section class="vm-points" aria-labelledby={'h-vm-' + name.replace(/[^A-Za-z0-9_-]/g, '_')} data-vm={name}>
          <h2 id={'h-vm-' + name.replace(/[^A-Za-z0-9_-]/g, '_')}>{name} <span class="muted">({points.length} point{points.length === 1 ? '' : 's'})</span></h2>
          <div class="table-wrap">
            <table>
              <thead><tr><th scope="col">Created</th><th scope="col">Point</th><th scope="col">Chain</th><th scope="col">Disks</th>
                <th scope="col" class="num">Size</th><th scope="col" class="num">Stored</th><th scope="col">Last check</th><th scope="col">Locked until</th><th scope="col">Restore</th></tr></thead>
              <tbody>
                {points.map((p) => (
                  <>
                    <tr key={p.id} data-point={p.id}>
                      <td>{when(p.created_at)}</td>
                      <td><code>{p.point_id}</code>{p.session_id ? <> · <a href={link('/sessions/' + p.session_id)}>session {p.session_id}</a></> : null}</td>
                      <td>{p.chain}</td>
                      <td>{(p.disks || []).map((d) => d.name).join(', ') || '–'}</td>
                      <td class="num">{bytes(p.logical_bytes ?? p.bytes_read)}</td>
                      <td class="num">{bytes(p.bytes_stored)}</td>
                      <td>{p.last_check ? <><State s={p.last_check.state} /> {when(p.last_check.at)}</> : <span class="muted">never checked</span>}</td>
                      <td>{p.locked_until ? when(p.locked_until) : '–'}</td>
                      <td><button type="button" aria-expanded={restoring === p.id ? 'true' : 'false'}
                        onClick={() => setRestoring(restoring === p.id ? null : p.id)}>Restore…</button></td>
                    </tr>
                    {restoring === p.id ? (
                      <tr class="restore-row"><td colSpan={9}><RestoreForm point={p} hosts={poll.data.hosts} /></td></tr>
                    ) : null}
                  </>
                ))}
              </tbody>
            </table>
          </div>
        </section>
      ))}
    </>
  );
}

const TARGETS = [['file', 'One disk into a new image file'], ['libvirt_domain', 'One disk into an existing shut-off libvirt domain'],
  ['new_domain', 'The whole VM as a new libvirt domain'], ['original_domain', 'The whole VM over the original domain']];

function RestoreForm({ point, hosts = [] }) {
  const [f, setF] = useState({ type: 'file', disk: point.disks?.[0]?.name || '', host: hosts[0]?.name || '', path: '', format: 'raw', vm: '', tdisk: '', name: '', directory: '', confirm: false });
  const [errors, setErrors] = useState({});
  const [formError, setFormError] = useState(null);
  const [started, setStarted] = useState(null);
  const set = (k) => (e) => { const t = e.currentTarget; setF((x) => ({ ...x, [k]: t.type === 'checkbox' ? t.checked : t.value })); };
  const whole = f.type === 'new_domain' || f.type === 'original_domain';
  const pid = 'restore-' + point.id;

  const submit = async (e) => {
    e.preventDefault();
    setErrors({}); setFormError(null);
    const target = { type: f.type };
    if (f.type === 'file') { target.path = f.path; target.format = f.format; }
    if (f.type === 'libvirt_domain') { target.vm = f.vm; if (f.tdisk) target.disk = f.tdisk; }
    if (f.type === 'new_domain') { if (f.name) target.name = f.name; if (f.directory) target.directory = f.directory; }
    if (f.type === 'original_domain') target.confirm = f.confirm;
    const body = { point: point.id, target };
    if (!whole) body.disk = f.disk;
    if (f.host || f.type !== 'original_domain') body.host = f.host;
    try {
      const r = await api.post('/restores', body);
      setStarted(r.session);
    } catch (err) {
      const k = { disk: 'disk', host: 'host', 'target.path': 'path', 'target.format': 'format', 'target.vm': 'vm', 'target.disk': 'tdisk',
        'target.name': 'name', 'target.directory': 'directory', 'target.confirm': 'confirm', 'target.type': 'type' }[err.field];
      if (k) setErrors({ [k]: err.message }); else setFormError(err);
    }
  };
  if (started) return <p role="status">Restore started: <a href={link('/sessions/' + started)}>session {started}</a>.</p>;
  return (
    <form class="restore-form" onSubmit={submit} noValidate aria-label={'Restore point ' + point.point_id}>
      <ErrorBox error={formError} what="The coordinator refused the restore" />
      <div class="grid-3">
        <Field id={pid + '-type'} label="Restore" error={errors.type}>
          <select value={f.type} onChange={set('type')}>{TARGETS.map(([v, l]) => <option value={v}>{l}</option>)}</select>
        </Field>
        {!whole ? (
          <Field id={pid + '-disk'} label="Disk" error={errors.disk}>
            <select value={f.disk} onChange={set('disk')}>{(point.disks || []).map((d) => <option value={d.name}>{d.name} ({bytes(d.size_bytes)})</option>)}</select>
          </Field>
        ) : null}
        <Field id={pid + '-host'} label={f.type === 'original_domain' ? 'Host (default: the VM\'s)' : 'Target host'} error={errors.host}>
          <select value={f.host} onChange={set('host')}>
            {f.type === 'original_domain' ? <option value="">The VM's host</option> : null}
            {hosts.map((h) => <option value={h.name}>{h.name} ({h.platform})</option>)}
          </select>
        </Field>
        {f.type === 'file' ? (
          <>
            <Field id={pid + '-path'} label="Image path on the host" error={errors.path}><input type="text" value={f.path} onInput={set('path')} /></Field>
            <Field id={pid + '-format'} label="Format" error={errors.format}>
              <select value={f.format} onChange={set('format')}><option value="raw">raw</option><option value="qcow2">qcow2</option></select>
            </Field>
          </>
        ) : null}
        {f.type === 'libvirt_domain' ? (
          <>
            <Field id={pid + '-vm'} label="Domain (name or UUID)" error={errors.vm}><input type="text" value={f.vm} onInput={set('vm')} /></Field>
            <Field id={pid + '-tdisk'} label="Its disk (default: the same name)" error={errors.tdisk}><input type="text" value={f.tdisk} onInput={set('tdisk')} /></Field>
          </>
        ) : null}
        {f.type === 'new_domain' ? (
          <>
            <Field id={pid + '-name'} label="New domain name" error={errors.name}><input type="text" value={f.name} onInput={set('name')} placeholder={point.vm + '-restored'} /></Field>
            <Field id={pid + '-directory'} label="Directory for its disks" error={errors.directory}><input type="text" value={f.directory} onInput={set('directory')} /></Field>
          </>
        ) : null}
        {f.type === 'original_domain' ? (
          <div class="field check">
            <input id={pid + '-confirm'} type="checkbox" checked={f.confirm} onChange={set('confirm')} />
            <label for={pid + '-confirm'}>Power off {point.vm} and overwrite its disks</label>
            {errors.confirm ? <span class="field-error" role="alert">{errors.confirm}</span> : null}
          </div>
        ) : null}
      </div>
      <button type="submit">Start restore</button>
    </form>
  );
}
