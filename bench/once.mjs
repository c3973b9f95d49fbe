// One Node op alone, with nothing else in the process: the Node counterpart of
// `kvm_ref --once`, for perf, callgrind and strace (bench/README.md, "Profiling one op").
//
//   node bench/once.mjs OP ITERS [BATCHES]
//
// Sets up the benchmark layout, runs BATCHES batches (default 1) of ITERS iterations
// and prints one JSON line per batch, as the references do.
import { openNodeOps, timeNodeBatch } from './ops.mjs';

const [op, itersArg, batchesArg] = process.argv.slice(2);
const iters = Number(itersArg);
const batches = batchesArg === undefined ? 1 : Number(batchesArg);
const node = openNodeOps();
try {
  const o = node.ops[op];
  if (!o || !(iters > 0) || !(batches > 0)) {
    console.error(`usage: node bench/once.mjs OP ITERS [BATCHES]; OP one of ${Object.keys(node.ops).join(', ')}`);
    process.exitCode = 64;
  } else {
    o.enter?.();
    for (let b = 0; b < batches; b++) console.log(JSON.stringify({ op, ...(await timeNodeBatch(o, iters)) }));
    o.leave?.();
  }
} finally {
  await node.close();
}
