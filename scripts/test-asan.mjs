// `npm run test:asan [-- vitest args]`: the test suite against the ASan+UBSan build of
// the addon (build-asan/, built first when missing or stale; see scripts/asan-env.mjs).
// Fails when vitest fails (a sanitizer error aborts the process it happens in), when any
// process of the run left an ASan/UBSan error report, or when LeakSanitizer found a leak
// allocated from guest_memfd.node. Reports: build-asan/logs/<time>/.
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { asanAddonPath, asanDir, asanEnv, ensureAsanAddon, root, scanAsanLogs } from './asan-env.mjs';

const started = Date.now();
ensureAsanAddon();
const logDir = path.join(asanDir, 'logs', new Date().toISOString().replace(/[:.]/g, '-'));
rmSync(logDir, { recursive: true, force: true });
const env = { ...process.env, ...asanEnv({ logDir }) };
console.log(`test:asan: addon ${path.relative(root, asanAddonPath)}, reports in ${path.relative(root, logDir)}`);

const vitest = path.join(root, 'node_modules', 'vitest', 'vitest.mjs');
if (process.stdout.isTTY && !('FORCE_COLOR' in env)) env.FORCE_COLOR = '1';
const child = spawn(process.execPath, [vitest, 'run', ...process.argv.slice(2)], { cwd: root, env, stdio: ['inherit', 'pipe', 'pipe'] });
// UBSan writes its messages to the failing process's stderr (which vitest relays), not
// to the log: keep the "runtime error:" lines and the stack after them.
const ubsan = [];
for (const [from, to] of [[child.stdout, process.stdout], [child.stderr, process.stderr]]) {
  let rest = '';
  let keep = 0;
  from.on('data', (chunk) => {
    to.write(chunk);
    const lines = (rest + chunk.toString('utf8')).split('\n');
    rest = lines.pop();
    for (const line of lines) {
      const plain = line.replace(/\x1b\[[0-9;]*m/g, '');
      if (/runtime error:/.test(plain)) (ubsan.push(plain), (keep = 12));
      else if (keep > 0 && /^\s+#\d+ /.test(plain)) (ubsan.push(plain), keep--);
      else keep = 0;
    }
  });
}
const [code, signal] = await new Promise((resolve) => child.on('close', (c, s) => resolve([c, s])));

const scan = scanAsanLogs(logDir);
if (ubsan.length) scan.failed = true;
if (scan.text || ubsan.length) console.log(`\ntest:asan: sanitizer reports:\n\n${[ubsan.join('\n'), scan.text].filter(Boolean).join('\n\n')}\n`);
const minutes = ((Date.now() - started) / 60_000).toFixed(1);
console.log(
  `test:asan: vitest ${signal ? `killed by ${signal}` : `exited ${code}`}; ${scan.errors.length} sanitizer error report(s), ` +
    `${ubsan.filter((l) => /runtime error:/.test(l)).length} UBSan message(s), ` +
    `${scan.ourLeaks.length} leak(s) from guest_memfd.node (${scan.files} report file(s); ` +
    `${scan.otherLeakBytes} bytes Node/V8 keep at exit ignored); ${minutes} min`,
);
process.exit(code === 0 && !signal && !scan.failed ? 0 : 1);
