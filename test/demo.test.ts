// The README's demo runs end to end on the real kernel.
import { describe, expect, test } from 'vitest';
import { runDemo } from '../lib/tools/demo';
import { needsKvm, noKvm } from './helpers';

describe.skipIf(noKvm)(needsKvm('demo'), () => {
  test('the demo runs a guest over guest_memfd and reports what it saw', async () => {
    const lines: string[] = [];
    expect(await runDemo((l) => lines.push(l))).toBe(0);
    const out = lines.join('\n');
    expect(out).toMatch(/invalidateStart punch-hole offset 4096 length 4096/);
    expect(out).toMatch(/sent over port 0x3f8: "hello from the host" \(then hlt\)/);
    expect(out).toMatch(/the host sees through the view: 42 42 42/);
    expect(out).toMatch(/after punchHole\(0x8000, 4096\) the guest reads: \[0, 0, 0, 0\]/);
    expect(out).toMatch(/buffer now has length 0/);
  });
});
