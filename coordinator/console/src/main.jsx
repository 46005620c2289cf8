// Ferry console: login, navigation and the hash router (#/jobs/3): the
// coordinator serves index.html for every page, the hash picks the view.
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { token, setUnauthorizedHandler } from './api.js';
import { Login } from './pages/login.jsx';
import { Dashboard } from './pages/dashboard.jsx';
import { Jobs } from './pages/jobs.jsx';
import { JobForm } from './pages/jobform.jsx';
import { Sessions, Session } from './pages/sessions.jsx';
import { Points } from './pages/points.jsx';
import { Hosts, Workers, Repositories } from './pages/infra.jsx';

const NAV = [
  ['/', 'Dashboard'], ['/jobs', 'Jobs'], ['/sessions', 'Sessions'], ['/points', 'Restore points'],
  ['/hosts', 'Hosts'], ['/workers', 'Workers'], ['/repositories', 'Repositories'],
];

function route(path) {
  let m;
  if (path === '/' || path === '') return [<Dashboard />, 'Dashboard', '/'];
  if (path === '/jobs') return [<Jobs />, 'Jobs', '/jobs'];
  if (path === '/jobs/new') return [<JobForm />, 'New job', '/jobs'];
  if ((m = path.match(/^\/jobs\/(\d+)$/))) return [<JobForm id={+m[1]} key={m[1]} />, 'Edit job', '/jobs'];
  if (path === '/sessions') return [<Sessions />, 'Sessions', '/sessions'];
  if ((m = path.match(/^\/sessions\/(\d+)$/))) return [<Session id={+m[1]} key={m[1]} />, 'Session ' + m[1], '/sessions'];
  if (path.startsWith('/points')) return [<Points />, 'Restore points', '/points'];
  if (path === '/hosts') return [<Hosts />, 'Hosts', '/hosts'];
  if (path === '/workers') return [<Workers />, 'Workers', '/workers'];
  if (path === '/repositories') return [<Repositories />, 'Repositories', '/repositories'];
  return [<p>No page at {path}. <a href="#/">Dashboard</a></p>, 'Not found', ''];
}

const currentPath = () => (location.hash.replace(/^#/, '') || '/').split('?')[0];

function App() {
  const [path, setPath] = useState(currentPath());
  const [authed, setAuthed] = useState(!!token.get());
  const [notice, setNotice] = useState('');

  useEffect(() => {
    const onHash = () => setPath(currentPath());
    window.addEventListener('hashchange', onHash);
    setUnauthorizedHandler(() => {
      token.clear();
      setNotice('The coordinator no longer accepts your token (401). Log in again.');
      setAuthed(false);
    });
    return () => window.removeEventListener('hashchange', onHash);
  }, []);

  const [page, title, section] = route(path);
  useEffect(() => { document.title = (authed ? title : 'Log in') + ' · Ferry'; }, [title, authed]);

  if (!authed) return <Login notice={notice} onLogin={() => { setNotice(''); setAuthed(true); }} />;
  return (
    <>
      <a class="skip" href="#main" onClick={(e) => { e.preventDefault(); document.getElementById('main').focus(); }}>Skip to content</a>
      <header class="top">
        <span class="brand">Ferry</span>
        <nav aria-label="Main">
          <ul>
            {NAV.map(([p, label]) => (
              <li><a href={'#' + p} aria-current={section === p ? 'page' : undefined}>{label}</a></li>
            ))}
            <li><a href="/api.html">API</a></li>
          </ul>
        </nav>
        <button type="button" class="link-button" onClick={() => { token.clear(); setAuthed(false); }}>Log out</button>
      </header>
      <main id="main" tabIndex={-1}>
        <h1>{title}</h1>
        {page}
      </main>
    </>
  );
}

render(<App />, document.getElementById('app'));
