// Entry point of `npm run bench` (see bench/README.md). The collector is exposed so
// the memory figures are measured after a full collection.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const r = spawnSync(process.execPath, ['--expose-gc', path.join(here, '..', 'bench', 'index.mjs'), ...process.argv.slice(2)], {
  stdio: 'inherit',
});
process.exitCode = r.status ?? 1;
