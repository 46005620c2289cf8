// Builds the console into OUTDIR: node build.mjs OUTDIR
//   app.js (+ .map)   the app (src/main.jsx and what it imports), bundled and minified by esbuild
//   app.css, api.css  the stylesheets
//   index.html        the console's page; api.html the API page (Redoc)
//   redoc.standalone.js, api.js   Redoc's standalone bundle (from node_modules, no CDN) and its start
//   favicon.svg, redoc-logo.svg (Redoc's sidebar logo, which it would load from its CDN)
// Everything is a static file with no inline script or style: the coordinator
// serves OUTDIR (--console-dir) from its own origin.
import { build } from 'esbuild';
import { copyFile, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2];
if (!out) {
  console.error('usage: node build.mjs OUTDIR');
  process.exit(2);
}
const outdir = resolve(out);
await mkdir(outdir, { recursive: true });
for (const f of await readdir(outdir)) await rm(join(outdir, f), { recursive: true, force: true });

const common = { bundle: true, minify: true, target: ['es2020'], logLevel: 'warning', legalComments: 'linked' };
await build({
  ...common,
  entryPoints: { app: join(here, 'src/main.jsx') },
  outdir, format: 'esm', sourcemap: 'linked',
  jsx: 'automatic', jsxImportSource: 'preact',
});
await build({ ...common, entryPoints: { api: join(here, 'src/api-page.js') }, outdir, format: 'iife' });
await build({ ...common, entryPoints: { app: join(here, 'src/app.css'), api: join(here, 'src/api.css') }, outdir, loader: { '.css': 'css' } });

const require = createRequire(import.meta.url);
const redoc = join(dirname(require.resolve('redoc/package.json')), 'bundles');
// Redoc's sidebar shows a logo from cdn.redoc.ly: pointed at a local file, so
// that no request leaves the coordinator's origin; any other CDN address in
// the bundle fails the build.
const LOGO = 'https://cdn.redoc.ly/redoc/logo-mini.svg';
let bundle = await readFile(join(redoc, 'redoc.standalone.js'), 'utf8');
if (bundle.split(LOGO).length !== 2) throw new Error(`build.mjs: expected ${LOGO} once in Redoc's bundle`);
bundle = bundle.replace(LOGO, '/redoc-logo.svg');
const cdn = bundle.match(/https?:\/\/cdn\.[^"'\s)]*/g);
if (cdn) throw new Error(`build.mjs: Redoc's bundle loads from a CDN: ${cdn.join(' ')}`);
await writeFile(join(outdir, 'redoc.standalone.js'), bundle);
await copyFile(join(redoc, 'redoc.standalone.js.LICENSE.txt'), join(outdir, 'redoc.standalone.js.LICENSE.txt'));
for (const f of ['index.html', 'api.html', 'favicon.svg', 'redoc-logo.svg']) await copyFile(join(here, f), join(outdir, f));
console.log(`console built into ${outdir}: ${(await readdir(outdir)).join(' ')}`);
