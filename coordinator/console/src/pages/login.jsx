import { useState } from 'preact/hooks';
import { request, token } from '../api.js';
import { Field } from '../ui.jsx';

// Login with an API token: checked with GET /status, then kept in
// sessionStorage (this tab only, gone when the browser session ends).
export function Login({ notice, onLogin }) {
  const [value, setValue] = useState('');
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);

  const submit = async (e) => {
    e.preventDefault();
    const t = value.trim();
    if (!t) { setError('Enter an API token.'); return; }
    setBusy(true);
    setError('');
    try {
      await request('GET', '/status', undefined, { tokenOverride: t, quiet401: true });
      token.set(t);
      onLogin();
    } catch (err) {
      setError(err.status === 401
        ? 'The coordinator refused this token (401 unauthorized). Check that you pasted the whole admin token (fy_ and 40 hex digits).'
        : err.message);
    } finally {
      setBusy(false);
    }
  };

  return (
    <main id="main" class="login">
      <h1>Ferry console</h1>
      {notice ? <p class="notice" role="status">{notice}</p> : null}
      <form onSubmit={submit} noValidate>
        <Field id="token" label="API token" error={error}
               hint="An admin token (ferry-coordinator init prints the first). It is kept in this browser tab only.">
          <input type="password" autoComplete="off" spellCheck={false} value={value}
                 onInput={(e) => setValue(e.currentTarget.value)} />
        </Field>
        <button type="submit" disabled={busy}>{busy ? 'Checking…' : 'Log in'}</button>
      </form>
    </main>
  );
}
