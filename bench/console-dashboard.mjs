// The console at scale (run by bench/console-dashboard.sh, which starts the
// coordinator and simulated workers): headless chromium through
// puppeteer-core (tests/console/node_modules).
//   1. The dashboard, loaded RUNS times: time from the last API answer it
//      waited for to the dashboard rendered (the app's performance marks
//      'dashboard-data' and 'dashboard-rendered'), and from navigation start.
//   2. The coordinator's CPU (utime+stime from /proc/PID/stat) in windows of
//      WINDOW_S seconds during one session: without a console, with the
//      dashboard open and polling, with the session's page open, and without
//      again.
// Environment: CONSOLE_URL FERRY_TOKEN COORD_PID JOB RUNS WINDOW_S CHROMIUM OUT
import { createRequire } from 'node:module';
import { readFileSync, writeFileSync } from 'node:fs';

const require = createRequire(process.env.PUPPETEER_FROM || import.meta.url);
const puppeteer = require('puppeteer-core');
const e = (k, d) => process.env[k] ?? d;
const base = e('CONSOLE_URL'), token = e('FERRY_TOKEN'), pid = +e('COORD_PID'), job = +e('JOB');
const RUNS = +e('RUNS', '5'), WINDOW_S = +e('WINDOW_S', '15');
const log = (m) => console.error('console-dashboard: ' + m);
const CLK = 100; // sysconf(_SC_CLK_TCK) on Linux
const cpu = () => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (+f[11] + +f[12]) / CLK; // utime, stime (fields 14, 15)
};
const api = async (method, path) => {
  const r = await fetch(base + '/api/v1' + path, { method, headers: { Authorization: 'Bearer ' + token } });
  return r.json();
};

const browser = await puppeteer.launch({
  executablePath: e('CHROMIUM', '/usr/bin/chromium'), headless: true,
  args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--window-size=1366,900'],
  defaultViewport: { width: 1366, height: 900 },
});
const result = { runs: [] };
try {
  const page = await browser.newPage();
  await page.evaluateOnNewDocument((t) => sessionStorage.setItem('ferry.token', t), token);

  // 1. Dashboard render time.
  for (let i = 0; i < RUNS; i++) {
    await page.goto(base + '/?run=' + i + '#/', { waitUntil: 'load' });
    await page.waitForFunction(() => performance.getEntriesByName('dashboard-rendered').length > 0, { timeout: 60000, polling: 50 });
    const m = await page.evaluate(() => {
      const data = performance.getEntriesByName('dashboard-data')[0].startTime;
      const rendered = performance.getEntriesByName('dashboard-rendered')[0].startTime;
      const apis = performance.getEntriesByType('resource').filter((r) => r.name.includes('/api/v1/') && r.responseEnd <= data + 1);
      const lastAnswer = Math.max(...apis.map((r) => r.responseEnd));
      return { api_answered_ms: lastAnswer, data_ms: data, rendered_ms: rendered, render_after_api_ms: rendered - lastAnswer,
        api_calls: apis.length, api_bytes: apis.reduce((n, r) => n + (r.transferSize || r.encodedBodySize || 0), 0),
        rows: document.querySelectorAll('main tr').length };
    });
    result.runs.push(m);
    log(`run ${i + 1}: API answered at ${m.api_answered_ms.toFixed(0)} ms, rendered at ${m.rendered_ms.toFixed(0)} ms ` +
        `(${m.render_after_api_ms.toFixed(1)} ms after the last answer; ${m.api_calls} API calls, ${m.api_bytes} bytes)`);
  }
  await page.goto('about:blank');

  // 2. CPU during a session.
  const started = await api('POST', `/jobs/${job}/start`);
  const session = started.session;
  log(`session ${session} started`);
  await new Promise((r) => setTimeout(r, 3000)); // past the start's own burst
  const windowCpu = async (name) => {
    const c0 = cpu(), t0 = performance.now();
    await new Promise((r) => setTimeout(r, WINDOW_S * 1000));
    const pct = (100 * (cpu() - c0)) / ((performance.now() - t0) / 1000);
    const s = await api('GET', `/sessions/${session}`);
    log(`${name}: coordinator CPU ${pct.toFixed(1)}% of one core (session ${s.state}, ${s.totals.succeeded}/${s.totals.tasks} tasks)`);
    result[name] = { cpu_pct: pct, session_state: s.state, tasks_done: s.totals.succeeded, tasks: s.totals.tasks };
    return s.state;
  };
  await windowCpu('without_console');
  await page.goto(base + '/#/', { waitUntil: 'load' });
  await windowCpu('dashboard_open');
  await page.goto(base + '/#/sessions/' + session, { waitUntil: 'load' });
  await windowCpu('session_page_open');
  await page.goto('about:blank');
  const last = await windowCpu('without_console_again');
  result.session_running_throughout = last === 'running';
  await api('POST', `/sessions/${session}/stop`).catch(() => {});
} finally {
  await browser.close();
}
const r = result.runs.map((x) => x.render_after_api_ms).sort((a, b) => a - b);
result.render_after_api_ms_median = r[Math.floor(r.length / 2)];
result.render_after_api_ms_max = r[r.length - 1];
const base_cpu = (result.without_console.cpu_pct + result.without_console_again.cpu_pct) / 2;
result.cpu_baseline_pct = base_cpu;
result.cpu_extra_dashboard_pct = result.dashboard_open.cpu_pct - base_cpu;
result.cpu_extra_session_page_pct = result.session_page_open.cpu_pct - base_cpu;
if (e('OUT')) writeFileSync(e('OUT'), JSON.stringify(result, null, 1));
console.log(`dashboard_render_after_api_ms_median=${result.render_after_api_ms_median.toFixed(1)} (target < 1000)`);
console.log(`dashboard_render_after_api_ms_max=${result.render_after_api_ms_max.toFixed(1)}`);
console.log(`dashboard_rendered_from_navigation_ms_median=${result.runs.map((x) => x.rendered_ms).sort((a, b) => a - b)[Math.floor(RUNS / 2)].toFixed(0)}`);
console.log(`coordinator_cpu_without_console_pct=${base_cpu.toFixed(2)}`);
console.log(`coordinator_cpu_dashboard_open_pct=${result.dashboard_open.cpu_pct.toFixed(2)} (extra ${result.cpu_extra_dashboard_pct.toFixed(2)} points of one core; target < 5)`);
console.log(`coordinator_cpu_session_page_open_pct=${result.session_page_open.cpu_pct.toFixed(2)} (extra ${result.cpu_extra_session_page_pct.toFixed(2)} points)`);
console.log(`session_running_throughout=${result.session_running_throughout}`);
