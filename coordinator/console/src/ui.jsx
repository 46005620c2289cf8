import { cloneElement } from 'preact';

// Small shared pieces: state badges, error boxes, form fields with their
// API error beside them.
export function State({ s }) {
  if (!s) return <span class="muted">–</span>;
  return <span class={'state state-' + s}>{s}</span>;
}

export function ErrorBox({ error, what }) {
  if (!error) return null;
  return (
    <p class="error-box" role="alert">
      {what ? what + ': ' : ''}{error.message}
      {error.field ? <span class="muted"> (field {error.field})</span> : null}
    </p>
  );
}

export function Loading({ poll, what }) {
  if (poll.data) return <ErrorBox error={poll.error} what={'Refreshing ' + what + ' failed'} />;
  if (poll.error) return <ErrorBox error={poll.error} what={'Loading ' + what + ' failed'} />;
  return <p class="muted" aria-live="polite">Loading {what}…</p>;
}

// A labelled form control; `error` is the message for this field, shown
// beside it and tied to it with aria-describedby.
export function Field({ id, label, error, hint, children }) {
  const describedBy = [error ? id + '-error' : null, hint ? id + '-hint' : null].filter(Boolean).join(' ') || undefined;
  const control = Array.isArray(children) ? children : [children];
  return (
    <div class={'field' + (error ? ' field-invalid' : '')} data-field={id}>
      <label for={id}>{label}</label>
      {control.map((c) => (c && c.props ? cloneElement(c, { id: c.props.id || id, 'aria-describedby': describedBy, 'aria-invalid': error ? 'true' : undefined }) : c))}
      {hint ? <small id={id + '-hint'} class="hint">{hint}</small> : null}
      {error ? <span id={id + '-error'} class="field-error" role="alert">{error}</span> : null}
    </div>
  );
}

export function Table({ caption, cols, rows, empty = 'None.', rowKey }) {
  return (
    <div class="table-wrap">
      <table>
        {caption ? <caption>{caption}</caption> : null}
        <thead><tr>{cols.map((c) => <th scope="col" class={c.num ? 'num' : ''}>{c.label}</th>)}</tr></thead>
        <tbody>
          {rows.length === 0 ? <tr><td colSpan={cols.length} class="muted">{empty}</td></tr> : null}
          {rows.map((r, i) => (
            <tr key={rowKey ? rowKey(r) : i}>
              {cols.map((c) => <td class={c.num ? 'num' : ''}>{c.cell(r)}</td>)}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export const link = (path) => '#' + path;
