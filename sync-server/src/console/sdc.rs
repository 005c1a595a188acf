//! Statistical disclosure control (SDC) for the small count tables in
//! funder reports.
//!
//! Rule: a count in `1..threshold` is published as `"<t"` (primary
//! suppression), zero is published as `0`, and a count `>= threshold` is
//! published exactly unless it is chosen for secondary suppression, when it
//! is published as [`SUPPRESSED_MARK`]. Secondary suppression hides enough
//! further cells (totals included) that no hidden count can be recovered
//! exactly by a reader who knows everything shown plus the rule itself:
//! a `"<t"` cell is in `[1, t-1]`, a secondary cell is in `[t, ∞)` (only
//! cells `>= t` are ever chosen, never zeros), rows add up to their row
//! totals, columns to their column totals, and totals to the grand total.
//!
//! # The audit
//!
//! A two-way table with its margins is a network: one node per row, one for
//! the row of column totals, one per column and one for the column of row
//! totals. Cell `(i, j)` is an arc row `i` → column `j`, row total `i` an arc
//! total-column → row `i`, column total `j` an arc column `j` → total-row,
//! and the grand total an arc total-row → total-column; every node is then
//! balanced (in-flow = out-flow) exactly when all the sums hold. A list with
//! a total is the same with two nodes (items one way, the total back).
//!
//! The constraint matrix is a network matrix, hence totally unimodular, so
//! the integer feasible set and its LP relaxation have the same min and max
//! for every cell; we do not even need an LP. The true table is a feasible
//! point; any other feasible table differs from it by a circulation, which
//! decomposes into simple cycles that respect every bound (flow
//! decomposition). Conversely, pushing one unit round a cycle of the
//! *residual* graph (arc forward where a hidden cell may grow, backward
//! where it may shrink; shown cells have no arcs) gives another integer
//! feasible table. So a hidden cell takes at least two values iff it lies
//! on a residual cycle, i.e. iff the head of one of its residual arcs
//! reaches the tail without using that cell. That is two graph searches
//! per hidden cell: exact, integer-only, no enumeration over values.
//!
//! # Limits
//!
//! Tables are audited one at a time: two published tables that share cells
//! or margins (e.g. the same referrals by agency and by month) are not
//! audited jointly. With `threshold == 2` a `"<2"` cell is exactly 1, and
//! some small patterns (e.g. a row `1, 1` with total `<3`) are disclosed by
//! the rule itself; no secondary suppression can help, so such cells are
//! reported in `unprotectable` rather than hidden by suppressing zeros.

/// The threshold used when a report does not configure one.
pub const DEFAULT_THRESHOLD: u64 = 5;

/// How a secondary-suppressed cell is rendered.
pub const SUPPRESSED_MARK: &str = "[c]";

/// How one count is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shown {
    /// The exact count (zero, or at least the threshold).
    Count(u64),
    /// Primary suppression: the count is in `1..threshold`; rendered `"<t"`.
    Below,
    /// Secondary suppression: the count is at least the threshold; rendered
    /// [`SUPPRESSED_MARK`].
    Suppressed,
}

impl Shown {
    /// Text for a report cell: `"12"`, `"<5"` or `"[c]"`.
    pub fn render(&self, threshold: u64) -> String {
        match self {
            Shown::Count(n) => n.to_string(),
            Shown::Below => format!("<{}", effective(threshold)),
            Shown::Suppressed => SUPPRESSED_MARK.to_string(),
        }
    }

    /// Whether the exact count is withheld (primary or secondary).
    pub fn is_hidden(&self) -> bool {
        !matches!(self, Shown::Count(_))
    }
}

/// A cell of a published table (for a list: `Cell { row: 0, col: i }` is
/// item `i` and [`CellRef::Total`] its total).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CellRef {
    /// An inner cell.
    Cell {
        /// Row index.
        row: usize,
        /// Column index.
        col: usize,
    },
    /// The total of a row.
    RowTotal(usize),
    /// The total of a column.
    ColTotal(usize),
    /// The grand total.
    Total,
}

/// A two-way table as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protected {
    /// Inner cells, `rows × cols`.
    pub cells: Vec<Vec<Shown>>,
    /// One per row.
    pub row_totals: Vec<Shown>,
    /// One per column.
    pub col_totals: Vec<Shown>,
    /// The grand total.
    pub total: Shown,
    /// Hidden cells that can still be recovered exactly and that no further
    /// allowed suppression could protect (only possible when the rule itself
    /// discloses them, e.g. `"<2"`). Empty in practice for `threshold >= 3`
    /// unless the table is tiny; callers should refuse to publish otherwise.
    pub unprotectable: Vec<CellRef>,
}

/// A list with a total as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedList {
    /// One per item.
    pub items: Vec<Shown>,
    /// The total of the items.
    pub total: Shown,
    /// As [`Protected::unprotectable`].
    pub unprotectable: Vec<CellRef>,
}

/// Thresholds below 1 behave like 1 (nothing is suppressed).
fn effective(threshold: u64) -> u64 {
    threshold.max(1)
}

/// Primary rule for one value (threshold already effective).
fn primary(v: u64, t: u64) -> Shown {
    if v == 0 || v >= t {
        Shown::Count(v)
    } else {
        Shown::Below
    }
}

/// A single count: just the primary rule.
pub fn protect_count(n: u64, threshold: u64) -> Shown {
    primary(n, effective(threshold))
}

/// A list with its total (e.g. children by age band).
pub fn protect_list(values: &[u64], threshold: u64) -> ProtectedList {
    let t = effective(threshold);
    let net = list_net(values);
    let (mut state, residual) = protect_net(&net, t);
    let total = state.pop().unwrap_or(Shown::Count(0));
    ProtectedList {
        items: state,
        total,
        unprotectable: residual
            .into_iter()
            .map(|e| list_ref(e, values.len()))
            .collect(),
    }
}

/// A two-way table (`rows × cols`, either may be 0 or 1) with row totals,
/// column totals and a grand total.
///
/// # Panics
/// If the rows do not all have the same length.
pub fn protect_table(cells: &[Vec<u64>], threshold: u64) -> Protected {
    let t = effective(threshold);
    let (net, m, n) = table_net(cells);
    let (state, residual) = protect_net(&net, t);
    let mut p = unflatten(&state, m, n);
    p.unprotectable = residual.into_iter().map(|e| table_ref(e, m, n)).collect();
    p
}

/// The audit: hidden cells of `p` (the publication of `cells`) whose value
/// is the same in every integer table consistent with what is shown and
/// what the rule tells the reader. Empty means safe.
///
/// # Panics
/// If the rows are ragged or `p` does not have the shape of `cells`.
pub fn exposed(cells: &[Vec<u64>], p: &Protected, threshold: u64) -> Vec<CellRef> {
    let (net, m, n) = table_net(cells);
    assert!(
        p.cells.len() == m
            && p.cells.iter().all(|r| r.len() == n)
            && p.row_totals.len() == m
            && p.col_totals.len() == n,
        "sdc: publication does not match the table's shape"
    );
    let state = flatten(p);
    audit(&net, &state, effective(threshold))
        .into_iter()
        .map(|e| table_ref(e, m, n))
        .collect()
}

/// The audit for a list (see [`exposed`]; refs as in [`CellRef`]).
///
/// # Panics
/// If `p` does not have one item per value.
pub fn exposed_list(values: &[u64], p: &ProtectedList, threshold: u64) -> Vec<CellRef> {
    assert_eq!(p.items.len(), values.len(), "sdc: list length mismatch");
    let net = list_net(values);
    let mut state = p.items.clone();
    state.push(p.total);
    audit(&net, &state, effective(threshold))
        .into_iter()
        .map(|e| list_ref(e, values.len()))
        .collect()
}

// ---------------------------------------------------------------------------
// Network representation.

/// Nodes are balance constraints; each edge is a published cell, an arc
/// `from → to` carrying its true value.
#[derive(Debug)]
struct Net {
    nodes: usize,
    edges: Vec<(usize, usize, u64)>,
}

fn sum(values: impl Iterator<Item = u64>) -> u64 {
    values.fold(0, u64::saturating_add)
}

/// Edge order: inner cells row-major, row totals, column totals, grand total.
fn table_net(cells: &[Vec<u64>]) -> (Net, usize, usize) {
    let m = cells.len();
    let n = cells.first().map_or(0, Vec::len);
    assert!(
        cells.iter().all(|r| r.len() == n),
        "sdc: table rows must all have the same length"
    );
    let row = |i: usize| i; // 0..=m, m = the row of column totals
    let col = |j: usize| m + 1 + j; // 0..=n, n = the column of row totals
    let mut edges = Vec::with_capacity((m + 1) * (n + 1));
    for (i, r) in cells.iter().enumerate() {
        for (j, &v) in r.iter().enumerate() {
            edges.push((row(i), col(j), v));
        }
    }
    for (i, r) in cells.iter().enumerate() {
        edges.push((col(n), row(i), sum(r.iter().copied())));
    }
    for j in 0..n {
        edges.push((col(j), row(m), sum(cells.iter().map(|r| r[j]))));
    }
    edges.push((row(m), col(n), sum(cells.iter().flatten().copied())));
    (
        Net {
            nodes: m + n + 2,
            edges,
        },
        m,
        n,
    )
}

/// Items `0 → 1`, then the total `1 → 0`.
fn list_net(values: &[u64]) -> Net {
    let mut edges: Vec<_> = values.iter().map(|&v| (0, 1, v)).collect();
    edges.push((1, 0, sum(values.iter().copied())));
    Net { nodes: 2, edges }
}

fn table_ref(e: usize, m: usize, n: usize) -> CellRef {
    if e < m * n {
        CellRef::Cell {
            row: e / n,
            col: e % n,
        }
    } else if e < m * n + m {
        CellRef::RowTotal(e - m * n)
    } else if e < m * n + m + n {
        CellRef::ColTotal(e - m * n - m)
    } else {
        CellRef::Total
    }
}

fn list_ref(e: usize, k: usize) -> CellRef {
    if e < k {
        CellRef::Cell { row: 0, col: e }
    } else {
        CellRef::Total
    }
}

fn flatten(p: &Protected) -> Vec<Shown> {
    let mut s: Vec<Shown> = p.cells.iter().flatten().copied().collect();
    s.extend(&p.row_totals);
    s.extend(&p.col_totals);
    s.push(p.total);
    s
}

fn unflatten(s: &[Shown], m: usize, n: usize) -> Protected {
    Protected {
        cells: (0..m).map(|i| s[i * n..(i + 1) * n].to_vec()).collect(),
        row_totals: s[m * n..m * n + m].to_vec(),
        col_totals: s[m * n + m..m * n + m + n].to_vec(),
        total: s[m * n + m + n],
        unprotectable: Vec::new(),
    }
}

// ---------------------------------------------------------------------------
// Audit.

/// Whether a hidden cell may grow / shrink by one from its true value
/// within what the reader knows. Shown cells are fixed.
fn slack(value: u64, shown: Shown, t: u64) -> (bool, bool) {
    match shown {
        Shown::Count(_) => (false, false),
        Shown::Below => (value < t - 1, value > 1),
        Shown::Suppressed => (true, value > t),
    }
}

/// Residual graph: `out[node]` = `(head, edge)`.
fn residual(net: &Net, state: &[Shown], t: u64) -> Vec<Vec<(usize, usize)>> {
    let mut out = vec![Vec::new(); net.nodes];
    for (e, &(u, v, val)) in net.edges.iter().enumerate() {
        let (up, down) = slack(val, state[e], t);
        if up {
            out[u].push((v, e));
        }
        if down {
            out[v].push((u, e));
        }
    }
    out
}

/// Is there a residual path `from → to` not using edge `skip`?
fn reaches(out: &[Vec<(usize, usize)>], from: usize, to: usize, skip: usize) -> bool {
    let mut seen = vec![false; out.len()];
    let mut stack = vec![from];
    seen[from] = true;
    while let Some(x) = stack.pop() {
        if x == to {
            return true;
        }
        for &(y, e) in &out[x] {
            if e != skip && !seen[y] {
                seen[y] = true;
                stack.push(y);
            }
        }
    }
    false
}

/// Hidden edges on no residual cycle: their value is recoverable.
fn audit(net: &Net, state: &[Shown], t: u64) -> Vec<usize> {
    let out = residual(net, state, t);
    (0..net.edges.len())
        .filter(|&e| {
            if !state[e].is_hidden() {
                return false;
            }
            let (u, v, val) = net.edges[e];
            let (up, down) = slack(val, state[e], t);
            let movable = (up && reaches(&out, v, u, e)) || (down && reaches(&out, u, v, e));
            !movable
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Protection.

/// Primary suppression, then repeatedly: take the first exposed cell (edge
/// order) and suppress the cheapest set of shown cells (sum of their values)
/// that closes a residual cycle through it, then re-audit. Finally release
/// secondary cells, largest first, whenever the table stays safe.
///
/// Termination and completeness: suppressing a cell only enlarges the
/// feasible set, so the best any choice can do is the state where every
/// cell `>= t` is suppressed. Cells exposed even there (`hopeless`) are
/// never chosen and never worked on. Any other exposed cell lies on a
/// residual cycle of that best state made of non-hopeless cells (each cell
/// on it is movable there), so the path search always finds a path with at
/// least one new cell; each round suppresses at least one more cell.
fn protect_net(net: &Net, t: u64) -> (Vec<Shown>, Vec<usize>) {
    let mut state: Vec<Shown> = net.edges.iter().map(|&(_, _, v)| primary(v, t)).collect();
    let all: Vec<Shown> = state
        .iter()
        .map(|&s| match s {
            Shown::Count(v) if v >= t => Shown::Suppressed,
            s => s,
        })
        .collect();
    let mut hopeless = vec![false; net.edges.len()];
    for e in audit(net, &all, t) {
        hopeless[e] = true;
    }
    let safe = |state: &[Shown], hopeless: &[bool]| -> Option<usize> {
        audit(net, state, t).into_iter().find(|&e| !hopeless[e])
    };
    while let Some(e) = safe(&state, &hopeless) {
        match cheapest_cover(net, &state, &hopeless, t, e) {
            Some(add) => {
                for c in add {
                    state[c] = Shown::Suppressed;
                }
            }
            // Unreachable by the argument above; kept so the loop must end.
            None => hopeless[e] = true,
        }
    }
    // Release unnecessary secondary suppressions, largest value first.
    let mut secondary: Vec<usize> = (0..state.len())
        .filter(|&e| state[e] == Shown::Suppressed)
        .collect();
    secondary.sort_by_key(|&e| std::cmp::Reverse((net.edges[e].2, e)));
    for e in secondary {
        state[e] = Shown::Count(net.edges[e].2);
        if safe(&state, &hopeless).is_some() {
            state[e] = Shown::Suppressed;
        }
    }
    let residual = audit(net, &state, t);
    (state, residual)
}

/// Shown cells (`>= t`, not hopeless) whose suppression puts exposed edge
/// `e` on a residual cycle, minimising the sum of their values (Dijkstra;
/// hidden cells' residual arcs cost 0). Ties: the path found first in edge
/// order, growing `e` before shrinking it.
fn cheapest_cover(
    net: &Net,
    state: &[Shown],
    hopeless: &[bool],
    t: u64,
    e: usize,
) -> Option<Vec<usize>> {
    // arcs[node] = (head, cost, edge, is_new)
    let mut arcs: Vec<Vec<(usize, u128, usize, bool)>> = vec![Vec::new(); net.nodes];
    for (f, &(u, v, val)) in net.edges.iter().enumerate() {
        if f == e {
            continue;
        }
        let (shown_as, cost, new) = match state[f] {
            Shown::Count(x) if x >= t && !hopeless[f] => (Shown::Suppressed, u128::from(x), true),
            s => (s, 0, false),
        };
        let (up, down) = slack(val, shown_as, t);
        if up {
            arcs[u].push((v, cost, f, new));
        }
        if down {
            arcs[v].push((u, cost, f, new));
        }
    }
    let (u, v, val) = net.edges[e];
    let (up, down) = slack(val, state[e], t);
    let mut best: Option<(u128, Vec<usize>)> = None;
    for (go, from, to) in [(up, v, u), (down, u, v)] {
        if !go {
            continue;
        }
        if let Some(found) = shortest(&arcs, from, to)
            && best.as_ref().is_none_or(|b| found.0 < b.0)
        {
            best = Some(found);
        }
    }
    best.map(|(_, cells)| cells)
}

/// O(V²) Dijkstra; returns the cost and the new cells on the path.
fn shortest(
    arcs: &[Vec<(usize, u128, usize, bool)>],
    from: usize,
    to: usize,
) -> Option<(u128, Vec<usize>)> {
    let n = arcs.len();
    let mut dist: Vec<Option<u128>> = vec![None; n];
    let mut prev: Vec<Option<(usize, usize, bool)>> = vec![None; n];
    let mut done = vec![false; n];
    dist[from] = Some(0);
    loop {
        let x = (0..n)
            .filter(|&x| !done[x])
            .filter_map(|x| dist[x].map(|d| (d, x)))
            .min()?
            .1;
        if x == to {
            break;
        }
        done[x] = true;
        let dx = dist[x]?;
        for &(y, c, f, new) in &arcs[x] {
            let d = dx + c;
            if !done[y] && dist[y].is_none_or(|dy| d < dy) {
                dist[y] = Some(d);
                prev[y] = Some((x, f, new));
            }
        }
    }
    let mut cells = Vec::new();
    let mut x = to;
    while let Some((p, f, new)) = prev[x] {
        if new {
            cells.push(f);
        }
        x = p;
    }
    Some((dist[to]?, cells))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const B: Shown = Shown::Below;
    const S: Shown = Shown::Suppressed;
    const fn c(n: u64) -> Shown {
        Shown::Count(n)
    }

    // --- independent brute-force auditor ---------------------------------

    /// Window around each true value that the brute force enumerates. An
    /// alternative value found proves "not exposed"; the cross-check below
    /// compares in both directions.
    const W: u64 = 2;

    fn bounds(s: Shown, t: u64) -> Option<(u64, u64)> {
        match s {
            Shown::Count(_) => None,
            Shown::Below => Some((1, t - 1)),
            Shown::Suppressed => Some((t, u64::MAX)),
        }
    }

    fn fits(x: u64, s: Shown, truth: u64, t: u64) -> bool {
        match bounds(s, t) {
            None => x == truth,
            Some((lo, hi)) => lo <= x && x <= hi,
        }
    }

    /// Enumerates every assignment of the hidden inner cells within
    /// `[lo, hi] ∩ [v-W, v+W]`, derives the totals, and keeps the tables
    /// consistent with what is shown. Returns hidden cells that never took
    /// a value other than their true one.
    fn brute_table(cells: &[Vec<u64>], p: &Protected, t: u64) -> Vec<CellRef> {
        let t = effective(t);
        let m = cells.len();
        let n = cells.first().map_or(0, Vec::len);
        let rs: Vec<u64> = cells.iter().map(|r| r.iter().sum()).collect();
        let cs: Vec<u64> = (0..n).map(|j| cells.iter().map(|r| r[j]).sum()).collect();
        let g: u64 = rs.iter().sum();
        let hidden: Vec<(usize, usize)> = (0..m)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .filter(|&(i, j)| p.cells[i][j].is_hidden())
            .collect();
        let mut grid = cells.to_vec();
        let mut moved = std::collections::BTreeSet::new();
        #[allow(clippy::too_many_arguments)]
        fn rec(
            k: usize,
            hidden: &[(usize, usize)],
            grid: &mut Vec<Vec<u64>>,
            cells: &[Vec<u64>],
            p: &Protected,
            t: u64,
            truth: (&[u64], &[u64], u64),
            moved: &mut std::collections::BTreeSet<CellRef>,
        ) {
            let (rs, cs, g) = truth;
            if k == hidden.len() {
                let m = grid.len();
                let n = cs.len();
                let r2: Vec<u64> = grid.iter().map(|r| r.iter().sum()).collect();
                let c2: Vec<u64> = (0..n).map(|j| grid.iter().map(|r| r[j]).sum()).collect();
                let g2: u64 = r2.iter().sum();
                let ok = (0..m).all(|i| fits(r2[i], p.row_totals[i], rs[i], t))
                    && (0..n).all(|j| fits(c2[j], p.col_totals[j], cs[j], t))
                    && fits(g2, p.total, g, t);
                if ok {
                    for i in 0..m {
                        for j in 0..n {
                            if grid[i][j] != cells[i][j] {
                                moved.insert(CellRef::Cell { row: i, col: j });
                            }
                        }
                        if r2[i] != rs[i] {
                            moved.insert(CellRef::RowTotal(i));
                        }
                    }
                    for j in 0..n {
                        if c2[j] != cs[j] {
                            moved.insert(CellRef::ColTotal(j));
                        }
                    }
                    if g2 != g {
                        moved.insert(CellRef::Total);
                    }
                }
                return;
            }
            let (i, j) = hidden[k];
            let v = cells[i][j];
            let (lo, hi) = bounds(p.cells[i][j], t).expect("hidden");
            let lo = lo.max(v.saturating_sub(W));
            let hi = hi.min(v + W);
            for x in lo..=hi {
                grid[i][j] = x;
                let row_done = hidden.get(k + 1).is_none_or(|&(i2, _)| i2 != i);
                if row_done && !fits(grid[i].iter().sum(), p.row_totals[i], rs[i], t) {
                    continue;
                }
                rec(k + 1, hidden, grid, cells, p, t, truth, moved);
            }
            grid[i][j] = v;
        }
        rec(
            0,
            &hidden,
            &mut grid,
            cells,
            p,
            t,
            (&rs, &cs, g),
            &mut moved,
        );
        let mut all: Vec<CellRef> = Vec::new();
        for i in 0..m {
            for j in 0..n {
                if p.cells[i][j].is_hidden() {
                    all.push(CellRef::Cell { row: i, col: j });
                }
            }
            if p.row_totals[i].is_hidden() {
                all.push(CellRef::RowTotal(i));
            }
        }
        for j in 0..n {
            if p.col_totals[j].is_hidden() {
                all.push(CellRef::ColTotal(j));
            }
        }
        if p.total.is_hidden() {
            all.push(CellRef::Total);
        }
        all.retain(|r| !moved.contains(r));
        all
    }

    fn brute_list(values: &[u64], p: &ProtectedList, t: u64) -> Vec<CellRef> {
        let t = effective(t);
        let k = values.len();
        let total: u64 = values.iter().sum();
        let hidden: Vec<usize> = (0..k).filter(|&i| p.items[i].is_hidden()).collect();
        let mut moved = vec![false; k + 1];
        let mut cur = values.to_vec();
        let mut idx = vec![0u64; hidden.len()];
        let doms: Vec<(u64, u64)> = hidden
            .iter()
            .map(|&i| {
                let (lo, hi) = bounds(p.items[i], t).expect("hidden");
                (lo.max(values[i].saturating_sub(W)), hi.min(values[i] + W))
            })
            .collect();
        if doms.iter().any(|&(lo, hi)| lo > hi) {
            return Vec::new(); // inconsistent; not generated by the tests
        }
        for (h, &(lo, _)) in doms.iter().enumerate() {
            idx[h] = lo;
        }
        loop {
            for (h, &i) in hidden.iter().enumerate() {
                cur[i] = idx[h];
            }
            let s: u64 = cur.iter().sum();
            if fits(s, p.total, total, t) {
                for i in 0..k {
                    moved[i] |= cur[i] != values[i];
                }
                moved[k] |= s != total;
            }
            // odometer
            let mut h = 0;
            loop {
                if h == hidden.len() {
                    let mut out: Vec<CellRef> = (0..k)
                        .filter(|&i| p.items[i].is_hidden() && !moved[i])
                        .map(|i| CellRef::Cell { row: 0, col: i })
                        .collect();
                    if p.total.is_hidden() && !moved[k] {
                        out.push(CellRef::Total);
                    }
                    return out;
                }
                if idx[h] < doms[h].1 {
                    idx[h] += 1;
                    break;
                }
                idx[h] = doms[h].0;
                h += 1;
            }
        }
    }

    fn sorted(mut v: Vec<CellRef>) -> Vec<CellRef> {
        v.sort();
        v
    }

    /// Every cell `>= t` suppressed: the most protective publication.
    fn all_suppressed(cells: &[Vec<u64>], t: u64) -> Protected {
        let t = effective(t);
        let (net, m, n) = table_net(cells);
        let s: Vec<Shown> = net
            .edges
            .iter()
            .map(|&(_, _, v)| if v >= t { S } else { primary(v, t) })
            .collect();
        unflatten(&s, m, n)
    }

    fn check_rule(truth: u64, s: Shown, t: u64) -> Result<(), TestCaseError> {
        let t = effective(t);
        match s {
            Shown::Count(x) => {
                prop_assert_eq!(x, truth);
                prop_assert!(x == 0 || x >= t);
            }
            Shown::Below => prop_assert!((1..t).contains(&truth)),
            Shown::Suppressed => prop_assert!(truth >= t && truth > 0),
        }
        Ok(())
    }

    fn check_table_rule(cells: &[Vec<u64>], p: &Protected, t: u64) -> Result<(), TestCaseError> {
        let (net, m, n) = table_net(cells);
        prop_assert_eq!(p.cells.len(), m);
        prop_assert_eq!(p.row_totals.len(), m);
        prop_assert_eq!(p.col_totals.len(), n);
        for (&(_, _, v), s) in net.edges.iter().zip(flatten(p)) {
            check_rule(v, s, t)?;
        }
        Ok(())
    }

    // --- hand cases -------------------------------------------------------

    fn render_list(p: &ProtectedList, t: u64) -> Vec<String> {
        let mut v: Vec<String> = p.items.iter().map(|s| s.render(t)).collect();
        v.push(p.total.render(t));
        v
    }

    #[test]
    fn count() {
        assert_eq!(protect_count(0, 5), c(0));
        assert_eq!(protect_count(3, 5), B);
        assert_eq!(protect_count(5, 5), c(5));
        assert_eq!(protect_count(9, 10).render(10), "<10");
        assert_eq!(protect_count(1, 0), c(1));
        assert_eq!(protect_count(1, 1), c(1));
        assert_eq!(protect_count(7, u64::MAX), B);
        assert_eq!(S.render(5), "[c]");
    }

    #[test]
    fn list_one_small_needs_one_more() {
        let v = [3, 10, 12, 7];
        let p = protect_list(&v, 5);
        assert_eq!(render_list(&p, 5), ["<5", "10", "12", "[c]", "32"]);
        assert!(p.unprotectable.is_empty());
        assert!(exposed_list(&v, &p, 5).is_empty());
        // Without the secondary suppression the 3 is recoverable.
        let bare = ProtectedList {
            items: vec![B, c(10), c(12), c(7)],
            total: c(32),
            unprotectable: vec![],
        };
        assert_eq!(
            exposed_list(&v, &bare, 5),
            [CellRef::Cell { row: 0, col: 0 }]
        );
    }

    #[test]
    fn list_total_below_threshold() {
        let p = protect_list(&[1, 0, 2], 5);
        assert_eq!(render_list(&p, 5), ["<5", "0", "<5", "<5"]);
        assert!(p.unprotectable.is_empty());
        let p = protect_list(&[0, 3, 0, 0], 5);
        assert_eq!(render_list(&p, 5), ["0", "<5", "0", "0", "<5"]);
        assert!(exposed_list(&[0, 3, 0, 0], &p, 5).is_empty());
        let p = protect_list(&[], 5);
        assert_eq!(render_list(&p, 5), ["0"]);
    }

    #[test]
    fn table_single_small_cell() {
        let t = [vec![20, 30], vec![40, 3]];
        let p = protect_table(&t, 5);
        assert_eq!(p.cells, [vec![S, S], vec![S, B]]);
        assert_eq!(p.row_totals, [c(50), c(43)]);
        assert_eq!(p.col_totals, [c(60), c(33)]);
        assert_eq!(p.total, c(93));
        assert!(p.unprotectable.is_empty());
        assert!(exposed(&t, &p, 5).is_empty());
        assert!(brute_table(&t, &p, 5).is_empty());
    }

    #[test]
    fn all_zero_and_empty_tables() {
        let z = [vec![0, 0, 0], vec![0, 0, 0]];
        let p = protect_table(&z, 5);
        assert!(p.cells.iter().flatten().all(|&s| s == c(0)));
        assert_eq!(p.total, c(0));
        assert!(exposed(&z, &p, 5).is_empty());
        let p = protect_table(&[], 5);
        assert_eq!((p.cells.len(), p.col_totals.len(), p.total), (0, 0, c(0)));
        let p = protect_table(&[vec![], vec![]], 5);
        assert_eq!(p.row_totals, [c(0), c(0)]);
    }

    #[test]
    fn one_by_one() {
        for (v, s) in [(0, c(0)), (3, B), (7, c(7))] {
            let p = protect_table(&[vec![v]], 5);
            assert_eq!(p.cells, [vec![s]]);
            assert_eq!((p.row_totals[0], p.col_totals[0], p.total), (s, s, s));
            assert!(exposed(&[vec![v]], &p, 5).is_empty());
        }
    }

    #[test]
    fn row_with_only_small_cell_equal_to_total() {
        let t = [vec![3, 0], vec![10, 20]];
        let p = protect_table(&t, 5);
        assert_eq!(p.cells, [vec![B, c(0)], vec![S, c(20)]]);
        assert_eq!(p.row_totals, [B, S]);
        assert_eq!(p.col_totals, [c(13), c(20)]);
        assert_eq!(p.total, c(33));
        assert!(exposed(&t, &p, 5).is_empty());
        assert!(brute_table(&t, &p, 5).is_empty());
    }

    #[test]
    fn threshold_ten() {
        let v = [12, 9, 30, 15];
        let p = protect_list(&v, 10);
        assert_eq!(render_list(&p, 10), ["[c]", "<10", "30", "15", "66"]);
        let t = [vec![25, 4, 40], vec![11, 30, 12], vec![50, 60, 70]];
        let p = protect_table(&t, 10);
        assert_eq!(p.cells[0][1], B);
        assert!(exposed(&t, &p, 10).is_empty());
        assert!(p.unprotectable.is_empty());
        assert!(brute_table(&t, &p, 10).is_empty());
        assert_eq!(protect_count(10, 10).render(10), "10");
    }

    #[test]
    fn thresholds_zero_one_and_huge() {
        let t = [vec![1, 2], vec![0, 9]];
        for th in [0, 1] {
            let p = protect_table(&t, th);
            assert_eq!(p.cells, [vec![c(1), c(2)], vec![c(0), c(9)]]);
            assert!(exposed(&t, &p, th).is_empty());
        }
        let p = protect_table(&[vec![1_000_000, 2], vec![0, 9]], u64::MAX);
        assert_eq!(p.cells, [vec![B, B], vec![c(0), B]]);
        assert_eq!(p.total.render(u64::MAX), format!("<{}", u64::MAX));
        assert!(p.unprotectable.is_empty());
    }

    #[test]
    fn disclosed_by_the_rule_itself() {
        // "<2" is exactly 1: nothing can protect it, and nothing is wasted.
        let p = protect_list(&[1, 5], 2);
        assert_eq!(render_list(&p, 2), ["<2", "5", "6"]);
        assert_eq!(p.unprotectable, [CellRef::Cell { row: 0, col: 0 }]);
        // Row 1, 1 with total <3: cells >= 1 and total <= 2 force 1, 1, 2.
        let t = [vec![1, 1]];
        let p = protect_table(&t, 3);
        assert_eq!(p.unprotectable.len(), 6);
        assert_eq!(sorted(exposed(&t, &p, 3)), sorted(p.unprotectable.clone()));
        assert_eq!(
            sorted(brute_table(&t, &p, 3)),
            sorted(p.unprotectable.clone())
        );
    }

    #[test]
    fn twenty_by_ten_tables_end_safe() {
        let mut x: u64 = 12345;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        };
        // Dense small counts, then sparse ones (each needs its own cover).
        for small_per_100 in [30, 30, 30, 5, 5, 5, 2, 2] {
            let t: Vec<Vec<u64>> = (0..20)
                .map(|_| {
                    (0..10)
                        .map(|_| match next() % 100 {
                            r if r < small_per_100 => next() % 5,
                            r if r < small_per_100 + 10 => next() % 1_000_000,
                            _ => 5 + next() % 60,
                        })
                        .collect()
                })
                .collect();
            let p = protect_table(&t, 5);
            assert!(exposed(&t, &p, 5).is_empty());
            let sec = flatten(&p).iter().filter(|&&s| s == S).count();
            let prim = flatten(&p).iter().filter(|&&s| s == B).count();
            assert!(prim == 0 || sec > 0, "{prim} primary, {sec} secondary");
        }
        // Pathological: every cell small at one end of its range.
        for fill in [1, 4] {
            let t = vec![vec![fill; 10]; 20];
            let p = protect_table(&t, 5);
            assert!(exposed(&t, &p, 5).is_empty());
            let sec = flatten(&p).iter().filter(|&&s| s == S).count();
            assert!(sec > 0 || fill < 5);
        }
    }

    // --- properties ---------------------------------------------------------

    fn table(max_rows: usize, max_cols: usize) -> impl Strategy<Value = Vec<Vec<u64>>> {
        (0..=max_rows, 0..=max_cols).prop_flat_map(|(m, n)| {
            prop::collection::vec(
                prop::collection::vec(prop_oneof![0u64..=6, 0u64..=12], n),
                m,
            )
        })
    }

    /// Hide a random subset of the cells the rule allows to be hidden.
    fn random_pattern(cells: &[Vec<u64>], t: u64, mask: &[bool]) -> Protected {
        let t = effective(t);
        let (net, m, n) = table_net(cells);
        let s: Vec<Shown> = net
            .edges
            .iter()
            .enumerate()
            .map(|(e, &(_, _, v))| {
                if v >= t && mask[e % mask.len()] {
                    S
                } else {
                    primary(v, t)
                }
            })
            .collect();
        unflatten(&s, m, n)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn table_is_safe_and_matches_brute_force(cells in table(3, 3), t in 2u64..=6) {
            let p = protect_table(&cells, t);
            check_table_rule(&cells, &p, t)?;
            let audit = sorted(exposed(&cells, &p, t));
            prop_assert_eq!(&audit, &sorted(p.unprotectable.clone()));
            prop_assert_eq!(&audit, &sorted(brute_table(&cells, &p, t)));
            // Whatever remains exposed is exposed even with everything hidden.
            let best = all_suppressed(&cells, t);
            let best_exposed = exposed(&cells, &best, t);
            prop_assert!(audit.iter().all(|r| best_exposed.contains(r)));
        }

        #[test]
        fn audit_matches_brute_force_on_random_patterns(
            cells in table(3, 3),
            t in 2u64..=6,
            mask in prop::collection::vec(any::<bool>(), 16),
        ) {
            let p = random_pattern(&cells, t, &mask);
            prop_assert_eq!(
                sorted(exposed(&cells, &p, t)),
                sorted(brute_table(&cells, &p, t))
            );
        }

        #[test]
        fn list_is_safe_and_matches_brute_force(
            values in prop::collection::vec(prop_oneof![0u64..=6, 0u64..=15], 0..=5),
            t in 2u64..=6,
            mask in prop::collection::vec(any::<bool>(), 6),
        ) {
            let p = protect_list(&values, t);
            for (&v, &s) in values.iter().zip(&p.items) {
                check_rule(v, s, t)?;
            }
            check_rule(values.iter().sum(), p.total, t)?;
            let audit = exposed_list(&values, &p, t);
            prop_assert_eq!(&audit, &p.unprotectable);
            prop_assert_eq!(&audit, &brute_list(&values, &p, t));
            // Random patterns: the audit agrees with brute force.
            let mut items: Vec<Shown> = values.iter().map(|&v| primary(v, t)).collect();
            for (i, s) in items.iter_mut().enumerate() {
                if values[i] >= t && mask[i] {
                    *s = S;
                }
            }
            let sum: u64 = values.iter().sum();
            let total = if sum >= t && mask[5] { S } else { primary(sum, t) };
            let q = ProtectedList { items, total, unprotectable: vec![] };
            prop_assert_eq!(exposed_list(&values, &q, t), brute_list(&values, &q, t));
        }

        #[test]
        fn rule_holds_for_any_threshold(
            cells in table(4, 4),
            t in prop_oneof![0u64..=12, Just(u64::MAX)],
        ) {
            let p = protect_table(&cells, t);
            check_table_rule(&cells, &p, t)?;
            prop_assert_eq!(
                sorted(exposed(&cells, &p, t)),
                sorted(p.unprotectable.clone())
            );
        }

        #[test]
        fn larger_tables_end_safe(cells in table(8, 6), t in 3u64..=10) {
            let p = protect_table(&cells, t);
            check_table_rule(&cells, &p, t)?;
            let best = all_suppressed(&cells, t);
            let best_exposed = exposed(&cells, &best, t);
            prop_assert!(exposed(&cells, &p, t).iter().all(|r| best_exposed.contains(r)));
        }
    }
}
