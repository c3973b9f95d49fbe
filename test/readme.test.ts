// The README's Quick start runs as written, on the real kernel (where a VM type offers
// what it uses: a mappable guest_memfd that starts shared).
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { findVmType } from '../lib/testing/index';

const root = path.join(__dirname, '..');
const readme = readFileSync(path.join(root, 'README.md'), 'utf8');

/** The ```ts blocks of a README section, in order. */
function snippets(section: string, subsection?: string): string[] {
  let start = readme.indexOf(`\n## ${section}\n`);
  if (start < 0) throw new Error(`README has no section ${section}`);
  if (subsection !== undefined) start = readme.indexOf(`\n### ${subsection}\n`, start);
  if (start < 0) throw new Error(`README has no subsection ${subsection}`);
  const end = readme.indexOf(subsection === undefined ? '\n## ' : '\n###', start + 1);
  const body = readme.slice(start, end < 0 ? undefined : end);
  return [...body.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
}

const match = findVmType({ type: 'default', mmap: true, initShared: true });
const reason = match.type === undefined ? ` [skipped: ${match.reason}]` : '';

describe('README', () => {
  test('the Quick start has one TypeScript block importing the package', () => {
    const [quick] = snippets('Quick start');
    expect(quick).toMatch(/from 'guest-memfd'/);
  });

  test.skipIf(match.type === undefined)(`the Quick start and the memory-slot snippets run in order, as written${reason}`, async () => {
    const [quick] = snippets('Quick start');
    const [slots] = snippets('Quick start', 'Memory slots and guest memory');
    const dir = path.join(root, 'test', '.readme');
    mkdirSync(dir, { recursive: true });
    const file = path.join(dir, 'quick-start.ts');
    const lines: string[] = [];
    const source = `${quick}\n${slots}`.replace(/from 'guest-memfd'/g, "from '../../lib/index'").replace(/console\.log\(/g, 'log(');
    const imports = source.split('\n').filter((l) => l.startsWith('import '));
    const body = source.split('\n').filter((l) => !l.startsWith('import '));
    writeFileSync(file, `${imports.join('\n')}\nexport async function main(log: (...a: unknown[]) => void): Promise<void> {\n${body.join('\n')}\n}\n`);
    try {
      const mod = (await import(file)) as { main: (log: (...a: unknown[]) => void) => Promise<void> };
      await mod.main((...a) => lines.push(a.map(String).join(' ')));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    // apiVersion 12, KVM_CAP_GUEST_MEMFD, then the capabilities and the punch's event.
    expect(lines[0]).toMatch(/^12 [1-9]/);
    expect(lines.some((l) => l.startsWith('going away punch-hole 0 4096'))).toBe(true);
    // The Quick start's `using` closed everything, the slot section's raw slot too.
  });
});
