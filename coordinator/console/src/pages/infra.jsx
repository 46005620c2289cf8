// Hosts, workers and repositories.
import { api } from '../api.js';
import { usePoll } from '../poll.js';
import { bytes, when, ago } from '../format.js';
import { State, Table, Loading } from '../ui.jsx';

export function Hosts() {
  const poll = usePoll(() => api.get('/hosts'));
  return (
    <>
      <Loading poll={poll} what="hosts" />
      {poll.data ? (
        <Table rowKey={(h) => h.id} rows={poll.data.hosts} empty="No hosts: they appear when a worker registers."
          cols={[
            { label: 'Host', cell: (h) => h.name },
            { label: 'Platform', cell: (h) => h.platform },
            { label: 'Cluster', cell: (h) => h.cluster || '–' },
            { label: 'Workers', num: true, cell: (h) => h.workers },
            { label: 'VMs', num: true, cell: (h) => h.vms },
            { label: 'Appliance', cell: (h) => (h.appliance ? <><State s={h.appliance.state} /> {h.appliance.reason}</> : '–') },
          ]} />
      ) : null}
    </>
  );
}

export function Workers() {
  const poll = usePoll(() => api.get('/workers?limit=100000'));
  return (
    <>
      <Loading poll={poll} what="workers" />
      {poll.data ? (
        <Table rowKey={(w) => w.id} rows={poll.data.workers} empty="No workers."
          cols={[
            { label: 'Worker', cell: (w) => w.name },
            { label: 'State', cell: (w) => <State s={w.state} /> },
            { label: 'Host', cell: (w) => w.host || '–' },
            { label: 'Cluster', cell: (w) => w.cluster || '–' },
            { label: 'Version', cell: (w) => w.version || '–' },
            { label: 'Slots', num: true, cell: (w) => `${w.running_tasks}/${w.task_slots}` },
            { label: 'Bandwidth', cell: (w) => w.bandwidth },
            { label: 'Last heartbeat', cell: (w) => (w.last_heartbeat_at ? <time dateTime={w.last_heartbeat_at} title={when(w.last_heartbeat_at)}>{ago(w.last_heartbeat_at)}</time> : 'never') },
          ]} />
      ) : null}
    </>
  );
}

export function Repositories() {
  const poll = usePoll(() => api.get('/repositories'), [], 5000);
  return (
    <>
      <Loading poll={poll} what="repositories" />
      {poll.data ? (
        <Table rowKey={(r) => r.id} rows={poll.data.repositories} empty="No repositories."
          cols={[
            { label: 'Repository', cell: (r) => r.name },
            { label: 'Location', cell: (r) => <code>{r.location}</code> },
            { label: 'Points', num: true, cell: (r) => r.points },
            { label: 'Used', num: true, cell: (r) => bytes(r.space?.stored_bytes ?? r.stored_bytes) },
            { label: 'Logical', num: true, cell: (r) => bytes(r.space?.logical_bytes) },
            { label: 'Dedup', num: true, cell: (r) => (r.space?.dedup_ratio ? r.space.dedup_ratio.toFixed(2) + '×' : '–') },
            { label: 'Garbage', num: true, cell: (r) => bytes(r.space?.garbage_bytes) },
            { label: 'Capacity', num: true, cell: (r) => (r.capacity_bytes ? bytes(r.capacity_bytes) : '–') },
            { label: 'Tasks', num: true, cell: (r) => `${r.running_tasks}/${r.task_slots}` },
            { label: 'Bandwidth', cell: (r) => r.bandwidth || 'unlimited' },
          ]} />
      ) : null}
    </>
  );
}
