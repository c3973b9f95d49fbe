// Summaries of per-batch samples. A sample is one batch's answer:
// { iters, ns, user_ns, sys_ns, bytes }. Costs are nanoseconds per operation, so
// every ratio reads the same way whatever the unit: above 1, the subject is slower.

/** Linear-interpolated quantile of a sorted array. */
export function quantile(sorted, q) {
  if (sorted.length === 0) return undefined;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

export function summary(values) {
  const v = [...values].sort((a, b) => a - b);
  return { median: quantile(v, 0.5), min: v[0], max: v[v.length - 1], p10: quantile(v, 0.1), p90: quantile(v, 0.9), n: v.length };
}

/** Wall nanoseconds per operation (`per` operations per iteration). */
export const wallCost = (s, per = 1) => s.ns / s.iters / per;
/** CPU (user + system) nanoseconds per operation. */
export const cpuCost = (s, per = 1) => (s.user_ns + s.sys_ns) / s.iters / per;

/** A cost in ns/op as the row's unit shows it: microseconds, milliseconds (ms/...), or GB/s for byte ops. */
export function inUnit(costNs, unit, bytesPerOp) {
  if (unit === 'GB/s') return bytesPerOp / costNs;
  if (unit.startsWith('ms/')) return costNs / 1e6;
  return costNs / 1000;
}

/** One side's figures: the per-batch values in the row's unit and their summary. */
export function sideFigures(samples, unit, per) {
  const bytes = (s) => s.bytes / s.iters / per;
  const values = samples.map((s) => inUnit(wallCost(s, per), unit, bytes(s)));
  const cpu = samples.map((s) => inUnit(cpuCost(s, per), unit, bytes(s)));
  const sum = summary(values);
  // For GB/s the best batch is the largest figure.
  const best = unit === 'GB/s' ? sum.max : sum.min;
  return { ...sum, best, cpu: summary(cpu).median, values };
}

/**
 * Subject against a reference, batch by batch (batch b of each was taken next to
 * the other): the median and spread of the per-batch wall-cost ratios, the ratio
 * of the best batches, and the median per-batch CPU-cost ratio.
 */
export function ratioFigures(subject, reference, per) {
  const n = Math.min(subject.length, reference.length);
  const wall = [];
  const cpu = [];
  for (let b = 0; b < n; b++) {
    wall.push(wallCost(subject[b], per) / wallCost(reference[b], per));
    const rc = cpuCost(reference[b], per);
    if (rc > 0) cpu.push(cpuCost(subject[b], per) / rc);
  }
  const bestSubject = Math.min(...subject.map((s) => wallCost(s, per)));
  const bestReference = Math.min(...reference.map((s) => wallCost(s, per)));
  const w = summary(wall);
  return { ...w, bestOverBest: bestSubject / bestReference, cpu: cpu.length ? summary(cpu).median : undefined, values: wall };
}
