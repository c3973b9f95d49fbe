// Counts the bad-input cases the test suite covers, per public class: the tests
// (each parameterised case counts once) whose names say they check a refusal of bad
// input, grouped by the class they exercise (named in the test's describe path, else
// the test file's subject). Reads a vitest JSON report:
//   npx vitest run --reporter=json --outputFile=report.json && node scripts/bad-input-coverage.mjs report.json
import { readFileSync } from 'node:fs';
import path from 'node:path';

const report = JSON.parse(readFileSync(process.argv[2] ?? 'report.json', 'utf8'));
const BAD = /refus|reject|invalid|bad |bad-|wrong|forged|must be|ERR_|not a |outside|unaligned|misaligned|negative|NaN|\bnull\b|closed|typed error|out of range|too (large|big|small)|overlap|hostile|abuse|garbage|unknown|nonexistent|mistake/i;
// Ordered: the first class named in a test's path wins.
const CLASSES = [
  ['DirtyBitmap', /DirtyBitmap|dirty/i],
  ['AttributeMap', /AttributeMap|attribute map|attributes\./i],
  ['MemoryLayout', /layout/i],
  ['EventFd', /eventfd|irqfd|ioeventfd/i],
  ['LapicState', /lapic/i],
  ['Assembler', /assembler|asm|\bmem\(|operand|instruction/i],
  ['loaders and guest programs', /loadRealMode|loadLongMode|loadProgram|loader|guest program|guest\.\w+|captureOutput/i],
  ['decodeExit', /decodeExit|exit decod/i],
  ['Notifier', /notifier|listener|onError|populate/i],
  ['MemoryView', /\bview|map\(|mapping|unmap/i],
  ['MemorySlot', /slot/i],
  ['GuestMemory', /vm\.memory|guest memory|readInto/i],
  ['GuestMemfd', /guest_memfd|guestMemfd|gmem/i],
  ['Memfd', /memfd|seal/i],
  ['Vcpu', /vcpu|KVM_RUN|run\(|runSync|runUntil|cpuid|msr|regs|debug/i],
  ['Vm', /\bvm\b|createVm|convert|irqchip|irqLine|pit/i],
  ['Kvm', /kvm|device|probe/i],
];
const FILE_CLASS = {
  'receivers.test.ts': undefined, // counted per class from the describe path below
  'validate.test.ts': 'argument checks (shared)',
  'cli.test.ts': 'gmem CLI',
  'interval-map.test.ts': 'internal structures (interval map, slot table)',
  'slot-table.test.ts': 'internal structures (interval map, slot table)',
  'conversion-engine.test.ts': 'Vm',
  'conversion.test.ts': 'Vm',
  'asm.test.ts': 'Assembler',
  'asm-guest.test.ts': 'Assembler',
  'attribute-map.test.ts': 'AttributeMap',
};

const counts = new Map();
let total = 0;
for (const file of report.testResults) {
  const base = path.basename(file.name);
  for (const t of file.assertionResults) {
    if (t.status !== 'passed') continue;
    const full = [...t.ancestorTitles, t.title].join(' > ');
    if (!BAD.test(full)) continue;
    let cls = base === 'receivers.test.ts' ? t.ancestorTitles[1] : undefined;
    cls ??= FILE_CLASS[base];
    cls ??= CLASSES.find(([, re]) => re.test(full))?.[0] ?? 'other';
    counts.set(cls, (counts.get(cls) ?? 0) + 1);
    total++;
  }
}
const rows = [...counts].sort((a, b) => b[1] - a[1]);
const width = Math.max(...rows.map(([c]) => c.length));
for (const [c, n] of rows) console.log(`${c.padEnd(width)}  ${String(n).padStart(4)}`);
console.log(`${'total'.padEnd(width)}  ${String(total).padStart(4)}`);
