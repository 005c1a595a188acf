// The attacker of scenario 4: a published count table (shown numbers
// exact, "<t" in [1, t-1], "[c]" in [t, cap]) with its row, column and
// grand totals, searched exhaustively (interval propagation and branching)
// for hidden values that only one table agrees with.

import { check, log } from './lib.mjs';

export const THRESHOLD = 5;

/// What a shown value says about its count: [lo, hi].
export function domainOf(shown, cap, threshold = THRESHOLD) {
  if (/^\d+$/.test(shown)) return [Number(shown), Number(shown)];
  if (shown === `<${threshold}`) return [1, threshold - 1];
  if (shown === '[c]') return [threshold, Math.max(threshold, cap)];
  throw new Error(`not a published count: ${JSON.stringify(shown)}`);
}

// ---- the attacker: every table as shown, with its sums, solved

/// Bounded integer search over `vars` (domains [lo, hi]) under constraints
/// `sum(coef * x) = rhs` (coef ±1): is there a solution? Interval
/// propagation plus branching on the smallest domain.
export function feasible(domains, constraints, budget) {
  const lo = domains.map((d) => d[0]);
  const hi = domains.map((d) => d[1]);
  function propagate(lo, hi) {
    for (let changed = true; changed; ) {
      changed = false;
      for (const { terms, rhs } of constraints) {
        let minSum = 0;
        let maxSum = 0;
        for (const [v, c] of terms) {
          minSum += c > 0 ? lo[v] : -hi[v];
          maxSum += c > 0 ? hi[v] : -lo[v];
        }
        if (minSum > rhs || maxSum < rhs) return false;
        for (const [v, c] of terms) {
          const restMin = minSum - (c > 0 ? lo[v] : -hi[v]);
          const restMax = maxSum - (c > 0 ? hi[v] : -lo[v]);
          // c * x = rhs - rest
          let nlo;
          let nhi;
          if (c > 0) {
            nlo = rhs - restMax;
            nhi = rhs - restMin;
          } else {
            nlo = restMin - rhs;
            nhi = restMax - rhs;
          }
          if (nlo > lo[v]) {
            lo[v] = nlo;
            changed = true;
          }
          if (nhi < hi[v]) {
            hi[v] = nhi;
            changed = true;
          }
          if (lo[v] > hi[v]) return false;
        }
      }
    }
    return true;
  }
  function search(lo, hi) {
    if (--budget.left < 0) throw new Error('the disclosure search ran out of its budget');
    if (!propagate(lo, hi)) return false;
    let pick = -1;
    for (let v = 0; v < lo.length; v++) {
      if (lo[v] < hi[v] && (pick < 0 || hi[v] - lo[v] < hi[pick] - lo[pick])) pick = v;
    }
    if (pick < 0) return true;
    for (let x = lo[pick]; x <= hi[pick]; x++) {
      const l2 = lo.slice();
      const h2 = hi.slice();
      l2[pick] = x;
      h2[pick] = x;
      if (search(l2, h2)) return true;
    }
    return false;
  }
  return search(lo, hi);
}

/// The shown table as variables and sums; for each hidden value, whether
/// another value than the true one is feasible (so it has >= 2).
export function auditDisclosure(id, shown, trueCells, trueTotals, threshold = THRESHOLD) {
  const names = [];
  const domains = [];
  const truthOf = [];
  const cap = trueTotals.grand + 10;
  const add = (name, s, t) => {
    names.push(name);
    domains.push(domainOf(s, cap, threshold));
    truthOf.push(t);
    return names.length - 1;
  };
  const constraints = [];
  const nCols = shown.cols.length;
  const cellVars = shown.rows.map((r, i) => r.cells.slice(0, nCols).map((s, j) => add(`${r.label}/${shown.cols[j]}`, s, trueCells[i][j])));
  const colVars = shown.foot.slice(0, nCols).map((s, j) => add(`Total/${shown.cols[j]}`, s, trueTotals.cols[j]));
  const hasRowTotals = shown.rows.length > 0 && shown.rows[0].cells.length > nCols;
  let grandVar;
  if (nCols === 1) {
    grandVar = colVars[0];
  } else {
    grandVar = hasRowTotals ? add('Total/Total', shown.foot[nCols], trueTotals.grand) : null;
  }
  for (let j = 0; j < nCols; j++) {
    constraints.push({ terms: [...cellVars.map((row) => [row[j], 1]), [colVars[j], -1]], rhs: 0 });
  }
  if (hasRowTotals) {
    const rowVars = shown.rows.map((r, i) => add(`${r.label}/Total`, r.cells[nCols], trueTotals.rows[i]));
    rowVars.forEach((rv, i) => constraints.push({ terms: [...cellVars[i].map((v) => [v, 1]), [rv, -1]], rhs: 0 }));
    constraints.push({ terms: [...rowVars.map((v) => [v, 1]), [grandVar, -1]], rhs: 0 });
  }
  if (nCols > 1 && grandVar !== null) constraints.push({ terms: [...colVars.map((v) => [v, 1]), [grandVar, -1]], rhs: 0 });
  // The truth satisfies what is shown (else the table lies).
  truthOf.forEach((t, v) => check(t >= domains[v][0] && t <= domains[v][1], `${id}: the true ${names[v]} (${t}) fits what is shown`, domains[v]));
  const budget = { left: 2_000_000 };
  check(feasible(domains, constraints, budget), `${id}: the shown table is consistent`);
  let hidden = 0;
  for (let v = 0; v < names.length; v++) {
    const [lo, hi] = domains[v];
    if (lo === hi) continue;
    hidden += 1;
    const t = truthOf[v];
    const below = t > lo && feasible(domains.map((d, i) => (i === v ? [lo, t - 1] : d)), constraints, budget);
    const above = t < hi && feasible(domains.map((d, i) => (i === v ? [t + 1, hi] : d)), constraints, budget);
    check(below || above, `${id}: the hidden ${names[v]} cannot be worked out from the table (it has another feasible value than ${t})`, { shown, domains: Object.fromEntries(names.map((n, i) => [n, domains[i]])) });
  }
  log(`${id}: ${hidden} hidden values, none recoverable (${2_000_000 - budget.left} search nodes)`);
}


/// The attacker works: a table with one small count and everything else
/// shown must be found out (run before the real tables, so a search that
/// never finds anything cannot pass them).
export function selfTest() {
  const shown = { cols: ['n'], rows: [{ label: 'a', cells: ['<5'] }, { label: 'b', cells: ['10'] }], foot: ['13'] };
  let caught = false;
  try {
    auditDisclosure('self-test', shown, [[3], [10]], { cols: [13], rows: [3, 10], grand: 13 });
  } catch {
    caught = true;
  }
  check(caught, 'the disclosure search finds a small count that the total gives away');
  const safe = { cols: ['n'], rows: [{ label: 'a', cells: ['<5'] }, { label: 'b', cells: ['[c]'] }], foot: ['13'] };
  auditDisclosure('self-test (protected)', safe, [[3], [10]], { cols: [13], rows: [3, 10], grand: 13 });
}
