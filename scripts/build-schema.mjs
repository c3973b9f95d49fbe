// Writes schema/layout.schema.json, the JSON Schema of memory layout specs, from the
// zod schema the library validates with (so the two cannot drift apart).
import { createRequire } from 'node:module';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const { z } = require('zod');
const { LayoutSchema } = require(path.join(root, 'dist', 'memory', 'layout.js'));

export function layoutJsonSchema() {
  return {
    ...z.toJSONSchema(LayoutSchema, { io: 'input', unrepresentable: 'any' }),
    $id: 'https://github.com/guest-memfd/guest-memfd/schema/layout.schema.json',
    title: 'guest-memfd memory layout',
    description: 'Memory files and slots for createMemoryLayout() and `gmem layout`. Sizes and addresses are numbers or strings like "0x1000", "2MiB", "2MB" (units are binary).',
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  mkdirSync(path.join(root, 'schema'), { recursive: true });
  writeFileSync(path.join(root, 'schema', 'layout.schema.json'), JSON.stringify(layoutJsonSchema(), null, 2) + '\n');
}
