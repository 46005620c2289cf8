import { useState } from 'preact/hooks';
import { api } from '../api.js';
import { usePoll } from '../poll.js';
import { when } from '../format.js';
import { State, Table, Loading, ErrorBox, link } from '../ui.jsx';

export function selectionText(sel) {
  if (!sel) return '–';
  const parts = [];
  for (const [k, label] of [['vms', 'VMs'], ['tags', 'tags'], ['hosts', 'hosts'], ['clusters', 'clusters']]) {
    if (sel[k] && sel[k].length) parts.push(label + ': ' + sel[k].join(', '));
  }
  return parts.join('; ') || '–';
}

export function Jobs() {
  const poll = usePoll(async () => {
    const [j, r] = await Promise.all([api.get('/jobs'), api.get('/repositories')]);
    return { jobs: j.jobs, repos: new Map(r.repositories.map((x) => [x.id, x.name])) };
  });
  const [actionError, setActionError] = useState(null);
  const [message, setMessage] = useState('');

  const act = async (job, what) => {
    setActionError(null);
    try {
      const r = await api.post(`/jobs/${job.id}/${what}`);
      setMessage(what === 'start' ? `Started ${job.name}: session ${r.session}.` : `Stopping ${job.name} (session ${r.session}).`);
      poll.refresh();
    } catch (e) {
      setActionError({ ...e, message: `${what === 'start' ? 'Start' : 'Stop'} ${job.name}: ${e.message}` });
    }
  };

  return (
    <>
      <p><a class="button" href={link('/jobs/new')}>New job</a></p>
      <p role="status" class="notice-inline">{message}</p>
      <ErrorBox error={actionError} />
      <Loading poll={poll} what="jobs" />
      {poll.data ? (
        <Table rowKey={(j) => j.id} rows={poll.data.jobs} empty="No jobs yet: create one."
          cols={[
            { label: 'Name', cell: (j) => <a href={link('/jobs/' + j.id)}>{j.name}</a> },
            { label: 'Kind', cell: (j) => j.kind || 'backup' },
            { label: 'Selection', cell: (j) => <span class="wrap">{j.kind === 'copy' ? 'copy of job ' + j.source_job : selectionText(j.selection)}</span> },
            { label: 'Repository', cell: (j) => poll.data.repos.get(j.repository) || j.repository },
            { label: 'Schedule', cell: (j) => (j.enabled === false ? 'disabled; ' : '') + (j.schedule_description || 'manual') },
            { label: 'Next run', cell: (j) => when(j.next_run_at) },
            { label: 'Last session', cell: (j) => j.last_session ? <a href={link('/sessions/' + j.last_session.id)}><State s={j.last_session.state} /> #{j.last_session.id}</a> : <span class="muted">never</span> },
            { label: 'Actions', cell: (j) => {
              const running = j.last_session && ['running', 'stopping'].includes(j.last_session.state);
              return running
                ? <button type="button" onClick={() => act(j, 'stop')} aria-label={'Stop ' + j.name}>Stop</button>
                : <button type="button" onClick={() => act(j, 'start')} aria-label={'Start ' + j.name}>Start</button>;
            } },
          ]} />
      ) : null}
    </>
  );
}
