// The console at scale (run by bench/console-dashboard.sh, which starts the
// coordinator and simulated workers): headless chromium through
// puppeteer-core (tests/console/node_modules).
//   1. The dashboard, loaded RUNS times: time from the last API answer it
//      waited for to the dashboard rendered (the app's performance marks
//      'dashboard-data' and 'dashboard-rendered'), and from navigation start.
//   2. The coordinator's CPU (utime+stime from /proc/PID/stat) in windows of
//      WINDOW_S seconds idle and SESSION_WINDOW_S (30: the session page's
//      task-list period) during one session: without a console, with the
//      dashboard open and polling, with the session's page open; CYCLES times
//      each, interleaved.
// Environment: CONSOLE_URL FERRY_TOKEN COORD_PID JOB RUNS WINDOW_S SESSION_WINDOW_S CYCLES CHROMIUM OUT
import { createRequire } from 'node:module';
import { readFileSync, writeFileSync } from 'node:fs';

const require = createRequire(process.env.PUPPETEER_FROM || import.meta.url);
const puppeteer = require('puppeteer-core');
const e = (k, d) => process.env[k] ?? d;
const base = e('CONSOLE_URL'), token = e('FERRY_TOKEN'), pid = +e('COORD_PID'), job = +e('JOB');
const RUNS = +e('RUNS', '5'), WINDOW_S = +e('WINDOW_S', '10'), SESSION_WINDOW_S = +e('SESSION_WINDOW_S', '30');
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

  // 2. The coordinator's CPU: idle (workers connected, heartbeats), then
  // during a session, in windows of WINDOW_S s with no console, the dashboard
  // open, the session's page open, repeated CYCLES times (the machine may be
  // shared: interleaving spreads its noise over every mode).
  let counting = null;
  page.on('request', (r) => { if (counting && r.url().includes('/api/v1/')) counting.n++; });
  // A window in which the coordinator was seen stopped (state T: this shared
  // machine's processes are sometimes paused) or that overran is measured again.
  const state = () => readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[0];
  const windowCpu = async (phase, mode, url, attempt = 1) => {
    const WIN = phase === 'session' ? SESSION_WINDOW_S : WINDOW_S;
    await page.goto(url || 'about:blank', { waitUntil: 'load' });
    counting = { n: 0 };
    const c0 = cpu(), t0 = performance.now();
    let stopped = false;
    const sampler = setInterval(() => { if (state() === 'T') stopped = true; }, 250);
    await new Promise((r) => setTimeout(r, WIN * 1000));
    clearInterval(sampler);
    const secs = (performance.now() - t0) / 1000;
    const pct = (100 * (cpu() - c0)) / secs;
    const w = { phase, mode, cpu_pct: pct, api_requests_per_s: counting.n / secs };
    counting = null;
    if ((stopped || secs > WIN * 1.3) && attempt < 4) {
      log(`${phase} ${mode}: discarded (${stopped ? 'the coordinator was stopped' : `took ${secs.toFixed(1)} s`}); again`);
      (result.discarded ||= []).push(w);
      return windowCpu(phase, mode, url, attempt + 1);
    }
    (result.windows ||= []).push(w);
    log(`${phase} ${mode}: coordinator CPU ${pct.toFixed(1)}% of one core; the console made ${w.api_requests_per_s.toFixed(2)} API requests/s`);
  };
  const CYCLES = +e('CYCLES', '2');
  for (let c = 0; c < CYCLES; c++) {
    await windowCpu('idle', 'none');
    await windowCpu('idle', 'dashboard', base + '/#/');
  }
  const started = await api('POST', `/jobs/${job}/start`);
  const session = started.session;
  log(`session ${session} started`);
  await new Promise((r) => setTimeout(r, 3000)); // past the start's own burst
  // The session's page (20,000 tasks): render time after the API answered.
  await page.goto(base + '/?s#/sessions/' + session, { waitUntil: 'load' });
  await page.waitForFunction(() => performance.getEntriesByName('session-rendered').length > 0, { timeout: 60000, polling: 50 });
  result.session_page = await page.evaluate(() => {
    const data = performance.getEntriesByName('session-data')[0].startTime;
    const rendered = performance.getEntriesByName('session-rendered')[0].startTime;
    const apis = performance.getEntriesByType('resource').filter((r) => r.name.includes('/api/v1/') && r.responseEnd <= data + 1);
    const last = Math.max(...apis.map((r) => r.responseEnd));
    return { api_answered_ms: last, rendered_ms: rendered, render_after_api_ms: rendered - last, session_bytes: Math.max(...apis.map((r) => r.encodedBodySize || 0)) };
  });
  log(`session page: API answered at ${result.session_page.api_answered_ms.toFixed(0)} ms (${result.session_page.session_bytes} bytes), rendered ${result.session_page.render_after_api_ms.toFixed(0)} ms later`);
  for (let c = 0; c < CYCLES; c++) {
    await windowCpu('session', 'none');
    await windowCpu('session', 'dashboard', base + '/#/');
    await windowCpu('session', 'session_page', base + '/#/sessions/' + session);
  }
  await page.goto('about:blank');
  const s = await api('GET', `/sessions/${session}`);
  result.session_running_throughout = s.state === 'running';
  result.session_tasks = `${s.totals.succeeded}/${s.totals.tasks}`;
  await api('POST', `/sessions/${session}/stop`).catch(() => {});
} finally {
  await browser.close();
}
const r = result.runs.map((x) => x.render_after_api_ms).sort((a, b) => a - b);
result.render_after_api_ms_median = r[Math.floor(r.length / 2)];
result.render_after_api_ms_max = r[r.length - 1];
const mean = (ph, mode) => {
  const w = result.windows.filter((x) => x.phase === ph && x.mode === mode);
  return { cpu: w.reduce((n, x) => n + x.cpu_pct, 0) / w.length, min: Math.min(...w.map((x) => x.cpu_pct)),
    max: Math.max(...w.map((x) => x.cpu_pct)), rps: w.reduce((n, x) => n + x.api_requests_per_s, 0) / w.length };
};
result.summary = {};
for (const [ph, modes] of [['idle', ['none', 'dashboard']], ['session', ['none', 'dashboard', 'session_page']]]) {
  const none = mean(ph, 'none');
  for (const m of modes) {
    const x = mean(ph, m);
    result.summary[`${ph}_${m}`] = { ...x, extra: x.cpu - none.cpu };
    console.log(`coordinator_cpu_${ph}_${m}_pct=${x.cpu.toFixed(2)} (windows ${x.min.toFixed(1)}..${x.max.toFixed(1)}; ` +
      (m === 'none' ? 'baseline' : `extra ${(x.cpu - none.cpu).toFixed(2)} points of one core, target < 5; ${x.rps.toFixed(2)} API requests/s`) + ')');
  }
}
if (e('OUT')) writeFileSync(e('OUT'), JSON.stringify(result, null, 1));
console.log(`session_page_render_after_api_ms=${result.session_page.render_after_api_ms.toFixed(1)} (GET /sessions/ID: ${result.session_page.session_bytes} bytes, answered ${result.session_page.api_answered_ms.toFixed(0)} ms after navigation)`);
console.log(`session_tasks_done=${result.session_tasks}`);
console.log(`session_running_throughout=${result.session_running_throughout}`);
