/**
 * Runs a command inside a QEMU guest booted from a given kernel image, for testing
 * against kernels (and KVM features) the host does not have.
 *
 * The guest sees the host's root file system read-only (so Node, npm and the
 * project's node_modules are the host's), the working directory read-write at the
 * same path, and a private control directory through which the command's exit status
 * comes back. KVM inside the guest is whatever the kernel image offers: under TCG
 * with `-cpu max`, QEMU emulates an AMD CPU with SVM and nested paging, so the
 * guest's KVM runs real (if slow) VMs. QEMU is killed on every exit path: the time
 * limit, a signal to this process, or this process exiting.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ArgumentRangeError, ArgumentTypeError } from '../core/errors';

/** Options of {@link runInVm}. */
export interface VmRunOptions {
  /** Path of the kernel image (bzImage) to boot. */
  kernel: string;
  /** The command and its arguments, run inside the guest with `cwd` as working directory. */
  command: readonly string[];
  /** Shared read-write with the guest at the same path, and the command's working directory. Default `process.cwd()`. */
  cwd?: string;
  /** Time limit in milliseconds for the whole run, boot included. Default 30 minutes. */
  timeoutMs?: number;
  /** Guest memory in MiB. Default 4096. */
  memoryMiB?: number;
  /** Guest CPUs. Default 1 (multi-threaded TCG with several CPUs has been seen to crash guest kernels). */
  cpus?: number;
  /** NUMA nodes to give the guest, memory split evenly (CPUs on node 0). Default 1 (no NUMA topology). */
  numaNodes?: number;
  /** Environment variables for the command, on top of PATH, HOME, TERM and CI, and every `GMEM_*` variable of this process. */
  env?: Readonly<Record<string, string>>;
  /** The QEMU binary. Default `$GMEM_QEMU` or `qemu-system-x86_64` from PATH. */
  qemu?: string;
  /** QEMU accelerator. Default `'tcg,thread=multi'` (needs no hardware virtualization). */
  accel?: string;
  /** Extra kernel command-line arguments. */
  append?: string;
  /** Receives the guest's console output (the command's stdout and stderr), line endings normalized. Default: this process's stdout. */
  output?: (chunk: string) => void;
}

/** How a guest run ended. */
export interface VmRunResult {
  /** The command's exit status inside the guest, or null when it never reported one. */
  readonly exitCode: number | null;
  /** True when the time limit killed QEMU. */
  readonly timedOut: boolean;
  /** Why there is no exit status, when there is none (timeout, QEMU failure, guest crash). */
  readonly error?: string;
  /** Wall-clock milliseconds from QEMU's start to its end. */
  readonly durationMs: number;
}

/** A problem found before QEMU starts (missing QEMU or kernel image, bad option). */
export class VmRunError extends Error {
  /** `'ERR_QEMU_NOT_FOUND'`, `'ERR_KERNEL_NOT_FOUND'` or `'ERR_CWD_NOT_FOUND'`. */
  readonly code: string;
  /** A VM-run error with its `code`. */
  constructor(code: string, message: string) {
    super(message);
    this.name = 'VmRunError';
    this.code = code;
  }
}

/** Finds an executable on PATH (or checks a path given with a slash). */
export function findExecutable(name: string): string | undefined {
  const candidates = name.includes('/') ? [name] : (process.env['PATH'] ?? '').split(':').filter(Boolean).map((d) => path.join(d, name));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      if (statSync(c).isFile()) return c;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Single-quotes a word for bash. */
function shellQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

function positive(value: unknown, op: string, name: string, fallback: number, max: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value))
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: ${name} must be an integer, got ${String(value)}`);
  if (value < 1 || value > max) throw new ArgumentRangeError('ERR_OUT_OF_RANGE', `${op}: ${name} ${value} is outside 1..${max}`);
  return value;
}

/** The bash script that runs as PID 1 in the guest. */
function initScript(cwd: string, command: readonly string[], env: Record<string, string>): string {
  const nine = 'trans=virtio,version=9p2000.L,msize=262144,cache=mmap';
  const exports = Object.entries(env)
    .filter(([k]) => /^[A-Za-z_][A-Za-z0-9_]*$/.test(k))
    .map(([k, v]) => `export ${k}=${shellQuote(v)}`)
    .join('\n');
  return `#!/bin/bash
# PID 1 of a guest booted by guest-memfd's vm-run: mount what Node and KVM need, run
# the command, report its status through the control share, power off.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/hugepages
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t hugetlbfs hugetlbfs /dev/hugepages 2>/dev/null
mkdir -p /run/gmem-vm
if ! mount -t 9p -o ${nine} gmemctl /run/gmem-vm; then echo "vm-run: cannot mount the control share" >&2; echo o > /proc/sysrq-trigger; sleep 60; fi
mkdir -p ${shellQuote(cwd)} 2>/dev/null
if ! mount -t 9p -o ${nine} gmemwork ${shellQuote(cwd)}; then echo "vm-run: cannot mount ${cwd.replace(/'/g, '')}" >&2; echo o > /proc/sysrq-trigger; sleep 60; fi
ip link set lo up 2>/dev/null
hostname gmem-vm 2>/dev/null
${exports}
cd ${shellQuote(cwd)}
# Through a pipe, so the command sees what it would in a CI log, not a terminal.
${command.map(shellQuote).join(' ')} </dev/null 2>&1 | cat
echo \${PIPESTATUS[0]} > /run/gmem-vm/status
sync
echo o > /proc/sysrq-trigger
sleep 60
`;
}

// Every QEMU this process started and has not seen exit: killed if this process goes.
const live = new Set<ChildProcess>();
let hooked = false;
function killAll(): void {
  for (const child of live) child.kill('SIGKILL');
}
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', killAll);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const)
    process.once(signal, () => {
      killAll();
      process.kill(process.pid, signal);
    });
}

/**
 * Boots `kernel` under QEMU and runs `command` inside, with the host's root file
 * system shared read-only and `cwd` read-write. Resolves with the command's exit
 * status (or why there is none); never leaves QEMU running.
 *
 * @throws VmRunError when QEMU, the kernel image or `cwd` is missing (before starting anything)
 *
 * @example
 * const r = await runInVm({ kernel: '/boot/bzImage-7.3', command: ['npx', 'vitest', 'run'] });
 * process.exitCode = r.exitCode ?? 1;
 */
export async function runInVm(options: VmRunOptions): Promise<VmRunResult> {
  const op = 'runInVm';
  if (options === null || typeof options !== 'object')
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: options must be an object`);
  if (typeof options.kernel !== 'string' || options.kernel === '')
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: options.kernel must be the path of a kernel image`);
  if (!Array.isArray(options.command) || options.command.length === 0 || !options.command.every((w) => typeof w === 'string'))
    throw new ArgumentTypeError('ERR_INVALID_ARG_TYPE', `${op}: options.command must be a non-empty array of strings`);
  const timeoutMs = positive(options.timeoutMs, op, 'options.timeoutMs', 30 * 60_000, 24 * 3600_000);
  const memoryMiB = positive(options.memoryMiB, op, 'options.memoryMiB', 4096, 1 << 20);
  const cpus = positive(options.cpus, op, 'options.cpus', 1, 64);
  const numaNodes = positive(options.numaNodes, op, 'options.numaNodes', 1, 8);
  if (memoryMiB % numaNodes !== 0)
    throw new ArgumentRangeError('ERR_INVALID_ARG_VALUE', `${op}: options.memoryMiB ${memoryMiB} does not split evenly into ${numaNodes} NUMA nodes`);
  const qemuName = options.qemu ?? (process.env['GMEM_QEMU'] || 'qemu-system-x86_64');
  const qemu = findExecutable(qemuName);
  if (!qemu)
    throw new VmRunError(
      'ERR_QEMU_NOT_FOUND',
      `${qemuName} not found; install QEMU (Debian and Ubuntu: apt-get install qemu-system-x86) or set GMEM_QEMU`,
    );
  const kernel = path.resolve(options.kernel);
  if (!existsSync(kernel) || !statSync(kernel).isFile())
    throw new VmRunError('ERR_KERNEL_NOT_FOUND', `kernel image ${kernel} not found (see kernel/README.md for how to build one)`);
  const cwd = path.resolve(options.cwd ?? process.cwd());
  if (!existsSync(cwd) || !statSync(cwd).isDirectory()) throw new VmRunError('ERR_CWD_NOT_FOUND', `${cwd} is not a directory`);

  const env: Record<string, string> = {
    PATH: process.env['PATH'] ?? '/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin',
    HOME: process.env['HOME'] ?? '/root',
    TERM: 'dumb',
    GMEM_VM_KERNEL: path.basename(kernel),
  };
  for (const [k, v] of Object.entries(process.env)) if ((k.startsWith('GMEM_') || k === 'CI') && v !== undefined) env[k] = v;
  Object.assign(env, options.env ?? {});

  const control = mkdtempSync(path.join(tmpdir(), 'gmem-vm-'));
  const init = path.join(control, 'init.sh');
  writeFileSync(init, initScript(cwd, options.command, env), { mode: 0o755 });
  const numa: string[] = [];
  if (numaNodes > 1)
    for (let n = 0; n < numaNodes; n++)
      numa.push(
        '-object', `memory-backend-ram,id=mem${n},size=${memoryMiB / numaNodes}M`,
        '-numa', `node,nodeid=${n},memdev=mem${n}${n === 0 ? `,cpus=0-${cpus - 1}` : ''}`,
      );
  const append = [
    'console=ttyS0', 'root=hostroot', 'rootfstype=9p',
    'rootflags=trans=virtio,version=9p2000.L,msize=262144,cache=loose', 'ro',
    // The control directory is visible through the read-only root: bash has the
    // script open before init mounts a tmpfs over /tmp.
    `init=${init}`, 'panic=-1', 'quiet', 'loglevel=3',
    options.append ?? '',
  ];
  const args = [
    '-accel', options.accel ?? 'tcg,thread=multi', '-cpu', 'max', '-smp', String(cpus), '-m', `${memoryMiB}M`,
    ...numa,
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-monitor', 'none', '-serial', 'stdio',
    '-kernel', kernel, '-append', append.filter(Boolean).join(' '),
    '-fsdev', 'local,id=root,path=/,security_model=none,readonly=on,multidevs=remap',
    '-device', 'virtio-9p-pci,fsdev=root,mount_tag=hostroot',
    '-fsdev', `local,id=ctl,path=${control},security_model=none,multidevs=remap`,
    '-device', 'virtio-9p-pci,fsdev=ctl,mount_tag=gmemctl',
    '-fsdev', `local,id=work,path=${cwd},security_model=none,multidevs=remap`,
    '-device', 'virtio-9p-pci,fsdev=work,mount_tag=gmemwork',
  ];
  const output = options.output ?? ((chunk: string) => void process.stdout.write(chunk));
  const started = Date.now();
  hookExit();
  return new Promise<VmRunResult>((resolve) => {
    const child = spawn(qemu, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(child);
    let timedOut = false;
    let spawnError: string | undefined;
    let stderr = '';
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => output(chunk.replace(/\r\n/g, '\n')));
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
      output(chunk);
    });
    child.on('error', (e) => (spawnError = e.message));
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      live.delete(child);
      const durationMs = Date.now() - started;
      let exitCode: number | null = null;
      try {
        const text = readFileSync(path.join(control, 'status'), 'utf8').trim();
        if (/^\d+$/.test(text)) exitCode = Number(text);
      } catch {
        // no status: the guest never got that far
      }
      rmSync(control, { recursive: true, force: true });
      if (exitCode !== null && !timedOut) return resolve({ exitCode, timedOut, durationMs });
      const error = timedOut
        ? `the guest did not finish within ${timeoutMs} ms; QEMU was killed`
        : spawnError
          ? `QEMU could not start: ${spawnError}`
          : `the guest ended without reporting an exit status (QEMU ${signal ? `killed by ${signal}` : `exited ${code}`}${stderr.trim() ? `: ${stderr.trim().split('\n').slice(-3).join(' | ')}` : ''}; a guest kernel panic or a failed mount?)`;
      resolve({ exitCode, timedOut, error, durationMs });
    });
  });
}
