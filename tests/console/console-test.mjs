// The web console in a real browser (headless Debian chromium through
// puppeteer-core) against a real coordinator and simulated workers
// (tests/integration/test-console.sh sets them up). Environment:
//   CONSOLE_URL   the console's origin (the coordinator's API URL)
//   FERRY_TOKEN   an admin token
//   SCREENSHOTS   directory for NN-step.png and requests.txt
//   EXPECT_VMS    VMs the job's tag selects (comma separated); OTHER_VMS: VMs it must not
//   EXISTING_JOB  a job name that exists already (the duplicate-name step)
//   CHROMIUM      the browser (default /usr/bin/chromium)
// Fails on: any step not reached, any request to another origin, any
// serious or critical axe-core violation on a main page, any CSP violation.
import puppeteer from 'puppeteer-core';
import { createRequire } from 'node:module';
import { mkdir, readFile, writeFile, rm } from 'node:fs/promises';
import { join } from 'node:path';

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) { console.error(`console-test: set ${k}`); process.exit(2); }
  return v;
};
const base = env('CONSOLE_URL').replace(/\/$/, '');
const origin = new URL(base).origin;
const tokenValue = env('FERRY_TOKEN');
const shots = env('SCREENSHOTS');
const expectVms = env('EXPECT_VMS').split(',');
const otherVms = env('OTHER_VMS', '').split(',').filter(Boolean);
const existingJob = env('EXISTING_JOB');
const jobName = 'nightly';
const T = +env('STEP_TIMEOUT_MS', '30000');

const require = createRequire(import.meta.url);
const axeSource = await readFile(require.resolve('axe-core/axe.min.js'), 'utf8');
await rm(shots, { recursive: true, force: true });
await mkdir(shots, { recursive: true });

let n = 0;
const t0 = Date.now();
const log = (m) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}`);
const requests = [];
const foreign = [];
const cspViolations = [];
const pageErrors = [];
const axeResults = {};

const browser = await puppeteer.launch({
  executablePath: env('CHROMIUM', '/usr/bin/chromium'),
  headless: true, // puppeteer-core >= 22: the new headless mode
  args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run', '--no-default-browser-check',
    '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-extensions',
    '--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider', '--window-size=1366,900'],
  defaultViewport: { width: 1366, height: 900 },
});
let page;
let failed = false;
try {
  page = await browser.newPage();
  page.setDefaultTimeout(T);
  page.on('request', (r) => {
    const url = r.url();
    requests.push(`${r.method()} ${url}`);
    if (url.startsWith('data:') || url.startsWith('blob:' + origin)) return;
    let o;
    try { o = new URL(url).origin; } catch { o = url; }
    if (o !== origin) foreign.push(url);
  });
  page.on('console', (m) => {
    const text = m.text();
    if (/Content Security Policy|Refused to (apply|execute|load|connect|create)/i.test(text)) cspViolations.push(`${page.url()}: ${text}`);
    else if (m.type() === 'error' && !/401|409|400|Failed to load resource/.test(text)) pageErrors.push(`${page.url()}: ${text}`);
  });
  page.on('pageerror', (e) => pageErrors.push(`${page.url()}: ${e.message}`));

  const shot = async (name, fullPage = true) => {
    n += 1;
    const file = join(shots, `${String(n).padStart(2, '0')}-${name}.png`);
    await page.screenshot({ path: file, fullPage });
    log(`screenshot ${file}`);
  };
  const axe = async (name) => {
    if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(axeSource);
    const r = await page.evaluate(async () => {
      const res = await window.axe.run(document, { resultTypes: ['violations'] });
      return res.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 5).map((x) => x.target.join(' ') + ': ' + x.failureSummary) }));
    });
    axeResults[name] = r;
    const bad = r.filter((v) => v.impact === 'serious' || v.impact === 'critical');
    log(`axe ${name}: ${r.length} violation(s), ${bad.length} serious or critical${r.length ? ': ' + r.map((v) => `${v.id} (${v.impact})`).join(', ') : ''}`);
    if (bad.length) throw new Error(`axe-core on ${name}: ${JSON.stringify(bad, null, 1)}`);
  };
  const text = (sel) => page.$eval(sel, (e) => e.textContent);
  const waitText = (sel, re, timeout = T) => page.waitForFunction((s, src) => {
    const e = document.querySelector(s);
    return e && new RegExp(src).test(e.textContent);
  }, { timeout, polling: 200 }, sel, re.source);
  const nav = async (label, ready) => {
    const links = await page.$$('header nav a');
    for (const l of links) {
      if ((await l.evaluate((e) => e.textContent)) === label) {
        await l.click();
        await page.waitForSelector(ready);
        return;
      }
    }
    throw new Error(`no navigation link ${label}`);
  };
  const clear = async (sel) => {
    await page.click(sel, { clickCount: 3 });
    await page.keyboard.press('Backspace');
  };
  const submitJob = async () => {
    await page.click('form.job-form button[type=submit]');
    // Done when the button is enabled again, or gone (a created job's page loading).
    await page.waitForFunction(() => {
      const b = document.querySelector('form.job-form button[type=submit]');
      return !b || !b.disabled;
    }, { polling: 100 });
  };

  // 1. A wrong token: a clear message beside the token field.
  await page.goto(base + '/', { waitUntil: 'networkidle0' });
  await page.waitForSelector('#token');
  await axe('login');
  await page.type('#token', 'fy_' + '0'.repeat(40));
  await page.keyboard.press('Enter');
  await page.waitForSelector('#token-error');
  const wrong = await text('#token-error');
  if (!/refused/.test(wrong) || !/401/.test(wrong)) throw new Error(`wrong token message: ${wrong}`);
  if (await page.evaluate(() => sessionStorage.getItem('ferry.token'))) throw new Error('a refused token was stored');
  log(`wrong token: "${wrong}"`);
  await shot('wrong-token');

  // 2. Log in: the dashboard.
  await clear('#token');
  await page.type('#token', tokenValue);
  await page.keyboard.press('Enter');
  await page.waitForSelector('.dashboard[data-ready=true]');
  if ((await page.evaluate(() => sessionStorage.getItem('ferry.token'))) !== tokenValue) throw new Error('token not in sessionStorage');
  if (await page.evaluate(() => localStorage.length)) throw new Error('something was written to localStorage');
  await waitText('.dashboard', new RegExp(existingJob));
  log('logged in: dashboard shown');
  await shot('dashboard');
  await axe('dashboard');

  // Polling: the dashboard refreshes itself, and not while its tab is hidden.
  const apiCalls = () => requests.filter((r) => r.includes('/api/v1/status')).length;
  let before = apiCalls();
  await new Promise((r) => setTimeout(r, 8000));
  const visibleCalls = apiCalls() - before;
  if (visibleCalls < 2) throw new Error(`the dashboard polled ${visibleCalls} times in 8 s`);
  const other = await browser.newPage();
  await other.bringToFront();
  await page.waitForFunction(() => document.hidden, { timeout: 5000, polling: 100 });
  before = apiCalls();
  await new Promise((r) => setTimeout(r, 7000));
  const hiddenCalls = apiCalls() - before;
  await other.close();
  await page.bringToFront();
  await page.waitForFunction(() => !document.hidden, { timeout: 5000, polling: 100 });
  if (hiddenCalls > 0) throw new Error(`the dashboard polled ${hiddenCalls} times while hidden`);
  log(`polling: ${visibleCalls} refreshes in 8 s visible, ${hiddenCalls} in 7 s hidden`);

  // 3. Jobs, then the new-job form.
  await nav('Jobs', 'a.button[href="#/jobs/new"]');
  await waitText('main table', new RegExp(existingJob));
  await shot('jobs');
  await axe('jobs');
  await page.click('a.button[href="#/jobs/new"]');
  await page.waitForSelector('form.job-form');
  await page.waitForFunction(() => document.querySelector('#job-repository').value !== '', { polling: 100 });

  // 4. The live preview lists the VMs the selection matches.
  await page.type('#job-name', jobName);
  await page.type('#job-tags', 'prod, bad/tag');
  await page.waitForFunction((vms) => {
    const p = document.querySelector('.preview');
    return p && (vms.every((v) => p.textContent.includes(v)) || /Preview:/.test(p.textContent));
  }, { polling: 200 }, expectVms);
  await shot('job-form-preview-bad-tag');
  await axe('job form');

  // 5. API errors beside the field they name: a bad tag name...
  await submitJob();
  await page.waitForSelector('[data-field="job-tags"] .field-error');
  const tagErr = await text('[data-field="job-tags"] .field-error');
  if (!/Entry 2 \(bad\/tag\)/.test(tagErr)) throw new Error(`tag error: ${tagErr}`);
  if (!(await page.$eval('#job-tags', (e) => e.getAttribute('aria-invalid') === 'true' && document.activeElement === e))) throw new Error('tags not marked invalid and focused');
  log(`bad tag: "${tagErr}" beside the tags field`);
  await shot('error-tag');
  await clear('#job-tags');
  await page.type('#job-tags', 'prod');
  await page.waitForFunction((vms, others) => {
    const p = document.querySelector('.preview table');
    return p && vms.every((v) => p.textContent.includes(v)) && others.every((v) => !p.textContent.includes(v));
  }, { polling: 200 }, expectVms, otherVms);
  const count = await text('[data-testid=preview-count]');
  if (!count.startsWith(`${expectVms.length} VM`)) throw new Error(`preview count: ${count}`);
  log(`preview: ${count}: ${expectVms.join(', ')}`);
  await shot('job-form-preview');

  // ...a schedule that never runs...
  await page.select('#job-schedule', 'cron');
  await page.waitForSelector('#job-expr');
  await page.type('#job-expr', '0 0 31 2 *');
  await submitJob();
  await page.waitForSelector('[data-field="job-schedule"] .field-error, [data-field="job-expr"] .field-error');
  const schedErr = await page.$eval('[data-field="job-schedule"] .field-error, [data-field="job-expr"] .field-error', (e) => e.textContent);
  if (!/never runs/.test(schedErr)) throw new Error(`schedule error: ${schedErr}`);
  log(`bad schedule: "${schedErr}" beside the schedule`);
  // The preview keeps the selection's VMs and names the schedule's error.
  await page.waitForSelector('[data-testid=preview-schedule-error]', { timeout: 10000 });
  const previewSched = await text('[data-testid=preview-schedule-error]');
  if (!/never runs/.test(previewSched)) throw new Error(`preview's schedule error: ${previewSched}`);
  if (!(await text('[data-testid=preview-count]')).startsWith(`${expectVms.length} VM`)) throw new Error('the preview lost the VMs on a bad schedule');
  await shot('error-schedule');
  await page.select('#job-schedule', 'daily');
  await page.waitForSelector('#job-at');
  await page.waitForFunction(() => !document.querySelector('[data-field="job-schedule"] .field-error'), { polling: 100, timeout: 5000 });
  // A valid schedule: the preview lists its next runs (the coordinator's own schedule code).
  await page.waitForFunction(() => document.querySelectorAll('.preview ol.next-runs li').length === 5, { polling: 200, timeout: 10000 });
  log(`preview: next runs ${(await text('.preview ol.next-runs')).slice(0, 60)}...`);

  // ...a name taken; then the fixed form is saved.
  await clear('#job-name');
  await page.type('#job-name', existingJob);
  await submitJob();
  await page.waitForSelector('[data-field="job-name"] .field-error');
  const nameErr = await text('[data-field="job-name"] .field-error');
  log(`duplicate name: "${nameErr}" beside the name`);
  await shot('error-name');
  await clear('#job-name');
  await page.type('#job-name', jobName);
  await submitJob();
  await page.waitForFunction(() => /^#\/jobs\/\d+$/.test(location.hash), { polling: 100 });
  const jobId = +(await page.evaluate(() => location.hash.split('/')[2]));
  log(`job ${jobName} created: id ${jobId}`);
  await page.waitForSelector('form.job-form #job-name');
  await shot('job-created');

  // 6. Start it from the jobs list; follow its session to "succeeded".
  await nav('Jobs', 'a.button[href="#/jobs/new"]');
  await page.waitForSelector(`button[aria-label="Start ${jobName}"]`);
  await page.click(`button[aria-label="Start ${jobName}"]`);
  await waitText('main [role=status]', /Started nightly: session \d+/);
  const sessionId = +(await text('main [role=status]')).match(/session (\d+)/)[1];
  log(`started: session ${sessionId}`);
  await shot('job-started');
  await page.evaluate((id) => { location.hash = '#/sessions/' + id; }, sessionId);
  await page.waitForSelector('.session .session-state');
  await shot('session-running');
  await waitText('.session .session-state .state', /^succeeded$/, 120000);
  log('session succeeded in the console');
  await shot('session-succeeded');
  await axe('session');

  // 7. Its tasks: one row per disk, each with a worker, host and tier.
  const rows = await page.$$eval('section[aria-labelledby=h-tasks] tbody tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
  for (const vm of expectVms) if (!rows.some((r) => r[0] === vm && r[6].startsWith('succeeded'))) throw new Error(`no succeeded task of ${vm}: ${JSON.stringify(rows)}`);
  if (!rows.every((r) => r[2] !== '–' && r[3] !== '–' && ['host', 'cluster', 'any'].includes(r[4]))) throw new Error(`tasks without worker/host/tier: ${JSON.stringify(rows)}`);
  const logText = await text('ol.log');
  if (!/session started/.test(logText)) throw new Error('no session log');
  log(`tasks: ${rows.map((r) => `${r[0]}/${r[1]} on ${r[2]}@${r[3]} (${r[4]})`).join(', ')}; bottleneck: ${await text('#h-bottleneck')}`);
  await page.$eval('#h-tasks', (e) => e.scrollIntoView());
  await shot('session-tasks');

  // 8. A restore point of the VM; the restore form.
  const vm = expectVms[0];
  await nav('Restore points', '#points-vm');
  await page.type('#points-vm', vm);
  await page.waitForFunction((v, s) => {
    const secs = [...document.querySelectorAll('section[data-vm]')];
    const sec = document.querySelector(`section[data-vm="${v}"]`);
    return secs.length === 1 && sec && sec.querySelector('tbody tr') && sec.textContent.includes('session ' + s);
  }, { polling: 200 }, vm, sessionId);
  log(`restore point of ${vm} from session ${sessionId} listed`);
  await shot('points');
  await axe('points');
  await page.click(`section[data-vm="${vm}"] tbody tr button`);
  await page.waitForSelector('form.restore-form');
  await shot('restore-form');
  await axe('restore form');

  // 9. Workers, hosts, repositories.
  await nav('Workers', 'main table');
  await waitText('main table', /connected/);
  await shot('workers');
  await axe('workers');
  await nav('Hosts', 'main table');
  await shot('hosts');
  await nav('Repositories', 'main table');
  await shot('repositories');
  await nav('Sessions', 'main table');
  await shot('sessions');

  // 10. The API documentation, rendered by Redoc served by the coordinator.
  await page.click('header nav a[href="/api.html"]');
  await page.waitForSelector('body[data-redoc]', { timeout: 60000 });
  if ((await page.$eval('body', (b) => b.dataset.redoc)) !== 'ready') throw new Error('Redoc failed: ' + (await text('body')));
  await page.waitForFunction(() => /\/jobs\/preview|\/jobs/.test(document.body.textContent), { polling: 200 });
  await shot('api-docs', false); // Redoc's whole page is some 60,000 pixels tall
  await axe('API docs');

  // 11. Log out: the token is gone.
  await page.goto(base + '/#/', { waitUntil: 'networkidle0' });
  await page.waitForSelector('.dashboard');
  await page.click('header button.link-button');
  await page.waitForSelector('#token');
  if (await page.evaluate(() => sessionStorage.getItem('ferry.token'))) throw new Error('token left after logout');
  log('logged out');
} catch (e) {
  failed = true;
  console.error('FAIL: ' + (e.stack || e));
  if (page) await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true }).catch(() => {});
} finally {
  await writeFile(join(shots, 'requests.txt'), requests.join('\n') + '\n');
  await writeFile(join(shots, 'axe.json'), JSON.stringify(axeResults, null, 1));
  await browser.close();
}
log(`${requests.length} requests, all to ${origin}: ${foreign.length === 0 ? 'yes' : 'NO'}`);
if (foreign.length) { failed = true; console.error('FAIL: requests to other origins:\n  ' + foreign.join('\n  ')); }
if (cspViolations.length) { failed = true; console.error('FAIL: CSP violations:\n  ' + cspViolations.join('\n  ')); }
if (pageErrors.length) console.error('page errors (not failing the test):\n  ' + pageErrors.join('\n  '));
process.exit(failed ? 1 : 0);
