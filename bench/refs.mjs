// The reference programs as long-running child processes: bench/ref/kvm_ref.c
// (compiled here) and bench/ref/kvm_ref.py, each answering one batch per command on
// stdin, so the harness can alternate C / Node / Python batches cheaply. Also the
// busy-core load for the busy rows (kvm_ref --spin).
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const refDir = path.join(here, 'ref');
export const cSource = path.join(refDir, 'kvm_ref.c');
export const pySource = path.join(refDir, 'kvm_ref.py');
export const cflags = ['-O2', '-Wall', '-Wextra', '-std=gnu11'];

/** A reference that cannot run here (no KVM, no guest_memfd with the flags asked for). */
export class SkipError extends Error {}

/** Compiles kvm_ref.c into a temporary directory; returns { bin, dispose }. */
export function compileC(cc = process.env.CC || 'cc') {
  const dir = mkdtempSync(path.join(tmpdir(), 'gmem-bench-'));
  const bin = path.join(dir, 'kvm_ref');
  try {
    execFileSync(cc, [...cflags, '-o', bin, cSource], { stdio: ['ignore', 'inherit', 'inherit'] });
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`compiling ${path.relative(process.cwd(), cSource)} with ${cc} failed: ${e.message}`);
  }
  return { bin, dispose: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * One reference process in serve mode. `batch(op, iters)` sends "OP ITERS" and
 * resolves with its answer { iters, ns, user_ns, sys_ns, bytes }.
 */
export class RefProcess {
  #child;
  #lines;
  #waiting = [];
  #queued = [];
  #exited;
  #stderr = '';

  constructor(name, cmd, args) {
    this.name = name;
    this.#child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.#child.stderr.setEncoding('utf8');
    this.#child.stderr.on('data', (d) => (this.#stderr += d));
    this.#lines = createInterface({ input: this.#child.stdout });
    this.#lines.on('line', (line) => {
      const w = this.#waiting.shift();
      if (w) w.resolve(line);
      else this.#queued.push(line);
    });
    this.#exited = new Promise((resolve) => this.#child.on('close', (code, signal) => resolve({ code, signal })));
    this.#exited.then(({ code, signal }) => {
      const err = new Error(`${this.name} reference exited (${signal ?? code})${this.#stderr ? `: ${this.#stderr.trim()}` : ''}`);
      for (const w of this.#waiting.splice(0)) w.reject(err);
      this.dead = err;
    });
    this.#child.on('error', (e) => {
      for (const w of this.#waiting.splice(0)) w.reject(e);
      this.dead = e;
    });
  }

  get pid() {
    return this.#child.pid;
  }

  #next() {
    if (this.#queued.length) return Promise.resolve(this.#queued.shift());
    if (this.dead) return Promise.reject(this.dead);
    return new Promise((resolve, reject) => this.#waiting.push({ resolve, reject }));
  }

  async #message() {
    const line = await this.#next();
    let m;
    try {
      m = JSON.parse(line);
    } catch {
      throw new Error(`${this.name} reference: unexpected output ${JSON.stringify(line)}`);
    }
    if (m.skip) throw new SkipError(`${this.name} reference: ${m.skip}`);
    if (m.error) throw new Error(`${this.name} reference: ${m.error}`);
    return m;
  }

  /** Waits for the ready line; returns the ops it offers. */
  async ready() {
    const m = await this.#message();
    if (!m.ready) throw new Error(`${this.name} reference: expected a ready line, got ${JSON.stringify(m)}`);
    this.ops = m.ops;
    return this;
  }

  async batch(op, iters) {
    this.#child.stdin.write(`${op} ${iters}\n`);
    const m = await this.#message();
    if (m.op !== op || m.iters !== iters) throw new Error(`${this.name} reference: answer ${JSON.stringify(m)} to ${op} ${iters}`);
    return { iters: m.iters, ns: m.ns, user_ns: m.user_ns, sys_ns: m.sys_ns, bytes: m.bytes };
  }

  async close() {
    if (!this.dead) {
      this.#child.stdin.end('quit\n');
      const timer = setTimeout(() => this.#child.kill('SIGKILL'), 5000);
      await this.#exited;
      clearTimeout(timer);
    }
  }
}

export async function startC(bin) {
  return new RefProcess('C', bin, []).ready();
}

export async function startPython(python = process.env.PYTHON || 'python3') {
  return new RefProcess('Python', python, [pySource]).ready();
}

/** CPU seconds (user + system) a process has used, from /proc (Linux). */
function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields 14 and 15 of stat (utime, stime), in clock ticks; USER_HZ is 100 on Linux.
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/**
 * A CPU-bound process pinned to `cpu` (kvm_ref --spin). `stop()` kills it and
 * returns the share of one CPU it used while it ran (about 1 when it really spun).
 */
export async function startSpinner(bin, cpu) {
  const child = spawn(bin, ['--spin', String(cpu)], { stdio: 'ignore' });
  const t0 = process.hrtime.bigint();
  const stop = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  process.once('exit', stop);
  await new Promise((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', reject);
  });
  // Let it get going (and the scheduler settle) before measuring against it.
  await new Promise((resolve) => setTimeout(resolve, 200));
  return {
    pid: child.pid,
    cpu,
    async stop() {
      let share;
      try {
        share = cpuSeconds(child.pid) / (Number(process.hrtime.bigint() - t0) / 1e9);
      } catch {
        share = undefined;
      }
      const exited = new Promise((resolve) => child.once('close', resolve));
      stop();
      await exited;
      process.removeListener('exit', stop);
      return share;
    },
  };
}

export function toolVersions() {
  const first = (cmd, args) => {
    const r = spawnSync(cmd, args, { encoding: 'utf8' });
    return r.status === 0 ? (r.stdout || r.stderr).split('\n')[0].trim() : undefined;
  };
  return {
    python: first(process.env.PYTHON || 'python3', ['--version']),
    cc: first(process.env.CC || 'cc', ['--version']),
  };
}
