// Placeholder until the console's front end lands: node build.mjs OUTDIR
// copies index.html into OUTDIR.
import { copyFile, mkdir } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2];
if (!out) {
  console.error('usage: node build.mjs OUTDIR');
  process.exit(2);
}
await mkdir(resolve(out), { recursive: true });
await copyFile(join(here, 'index.html'), join(resolve(out), 'index.html'));
