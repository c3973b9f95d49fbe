/**
 * Programs a test compiles, built once per content: the binary is kept under
 * node_modules/.cache keyed by a hash of its sources and command, so the runs inside
 * emulated test kernels (which see this directory, and compile about 20x slower)
 * reuse what the host's run built. The compiler's first answer is kept with it.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const dir = path.join(__dirname, '..', 'node_modules', '.cache', 'guest-memfd-tests');

/** What the compiler said when the binary was built. */
export interface Built {
  readonly path: string;
  readonly status: number | null;
  readonly stderr: string;
}

/** Builds `name` with `command` (`{out}` stands for the output path) unless a build of the same inputs exists. */
export function buildOnce(name: string, command: readonly string[], sources: readonly string[]): Built {
  const hash = createHash('sha256');
  for (const s of sources) hash.update(readFileSync(s));
  hash.update(command.join('\0'));
  const key = hash.digest('hex').slice(0, 16);
  mkdirSync(dir, { recursive: true });
  const out = path.join(dir, `${name}-${key}`);
  const log = `${out}.log`;
  if (existsSync(out) && existsSync(log)) {
    const { status, stderr } = JSON.parse(readFileSync(log, 'utf8')) as { status: number | null; stderr: string };
    return { path: out, status, stderr };
  }
  const tmp = `${out}.${process.pid}.tmp`;
  const [cmd, ...args] = command.map((a) => a.replace('{out}', tmp));
  const r = spawnSync(cmd!, args, { encoding: 'utf8' });
  if (r.status === 0 && existsSync(tmp)) renameSync(tmp, out);
  writeFileSync(log, JSON.stringify({ status: r.status, stderr: r.stderr }));
  return { path: out, status: r.status, stderr: r.stderr };
}
