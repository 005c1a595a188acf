// Scenario 4: the outcomes report with disclosure control. A tablet of
// team "east" records a known data set (all dated today); a manager opens
// the report for today and checks every table against the true counts:
// small counts shown as "<5", others exact or "[c]", and no hidden cell
// recoverable from what is shown (an exhaustive bounded search per table).
// The CSV carries the same values.
//
// Extra environment: MANAGER_LINK, MANAGER_NAME.

import {
  Cli,
  axe,
  check,
  checkEq,
  checkNoLeaks,
  enrolCodeCli,
  env,
  fetchText,
  launch,
  log,
  noteSecret,
  parseCsv,
  scenario,
  secretNote,
  setUpAccount,
  signIn,
  sleep,
  text,
  visit,
  download,
} from './lib.mjs';
import { THRESHOLD, auditDisclosure, selfTest } from './disclosure.mjs';

const now = new Date();
const today = now.toISOString().slice(0, 10);
const TEAM = 'east';

/// A date of birth making a child `age` on today (birthday 10 days ago).
function bornAged(age) {
  const d = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() - 10));
  d.setUTCFullYear(d.getUTCFullYear() - age);
  return d.toISOString().slice(0, 10);
}

// ---- the data set: 12 families, all opened today
const CHILD_AGES = [[1, 2], [3], [4, 2, 6], [3, 1], [8, 12], [13], [9, 14, 11], [], [15, null], [12, null], [], []];
const BANDS = [
  ['0–4', 0, 4],
  ['5–10', 5, 10],
  ['11–15', 11, 15],
  ['16–17', 16, 17],
];
// Notes: [family index, category, how many]
const NOTES = [
  [0, 'visit', 3], [1, 'visit', 2], [2, 'visit', 3], // visit 8
  [3, 'phone_call', 2], [4, 'phone_call', 1], // phone call 3
  [5, 'court', 1], // court 1
  [6, 'school', 4], [7, 'school', 2], // school 6
  [8, 'other', 3], [9, 'other', 2], // other 5
];
const CATEGORY_LABEL = { visit: 'Visit', phone_call: 'Phone call', helpline: 'Helpline', court: 'Court', school: 'School', other: 'Other' };
// Referrals: [agency, outcome or null, how many]
const REFERRALS = [
  ['Citizens Advice', 'accepted', 6], ['Citizens Advice', 'declined', 2], ['Citizens Advice', null, 5],
  ["Barnardo's", 'accepted', 5], ["Barnardo's", null, 1],
  ['Local School', 'accepted', 7], ['Local School', 'declined', 3],
];
// One reason a spreadsheet would run as a formula: the CSV must make it text.
const FORMULA = '=HYPERLINK("http://x.invalid","y")';
const CLOSURES = [[8, FORMULA], [9, 'moved away'], [10, 'moved away'], [11, 'support complete']];
// Family days today: [prison, [[family index, adults, children], ...]]
const DAYS = [
  ['HMP Leeds', [[0, 1, 2], [1, 2, 1], [2, 1, 3], [3, 1, 1], [4, 2, 2], [5, 1, 2]]],
  ['HMP Hull', [[6, 1, 2], [7, 1, 1]]],
];

function truth() {
  const children = Object.fromEntries([...BANDS.map(([l]) => [l, 0]), ['Age not recorded', 0]]);
  for (const ages of CHILD_AGES) {
    for (const a of ages) {
      if (a === null) children['Age not recorded'] += 1;
      else children[BANDS.find(([, lo, hi]) => a >= lo && a <= hi)[0]] += 1;
    }
  }
  const notes = Object.fromEntries(Object.values(CATEGORY_LABEL).map((l) => [l, 0]));
  for (const [, c, n] of NOTES) notes[CATEGORY_LABEL[c]] += n;
  const outcomes = ['accepted', 'Awaiting outcome', 'declined'];
  const referrals = {};
  for (const [a, o, n] of REFERRALS) {
    referrals[a] ??= Object.fromEntries(outcomes.map((x) => [x, 0]));
    referrals[a][o ?? 'Awaiting outcome'] += n;
  }
  const closures = {};
  for (const [, r] of CLOSURES) closures[r] = (closures[r] ?? 0) + 1;
  return {
    supported: CHILD_AGES.length,
    new: CHILD_AGES.length,
    tables: {
      'closures-by-reason': { cols: ['Closures'], rows: Object.fromEntries(Object.entries(closures).map(([k, v]) => [k, [v]])) },
      'children-supported-by-age': { cols: ['Children'], rows: Object.fromEntries(Object.entries(children).map(([k, v]) => [k, [v]])) },
      'case-notes-by-category': { cols: ['Case notes'], rows: Object.fromEntries(Object.entries(notes).map(([k, v]) => [k, [v]])) },
      'family-day-attendance-by-prison': {
        cols: ['Families', 'Adults', 'Children'],
        rows: Object.fromEntries(
          DAYS.map(([prison, arrivals]) => [
            prison,
            [arrivals.length, arrivals.reduce((s, [, a]) => s + a, 0), arrivals.reduce((s, [, , c]) => s + c, 0)],
          ]),
        ),
      },
      'referrals-by-agency-and-outcome': {
        cols: outcomes,
        rowTotals: true,
        rows: Object.fromEntries(Object.entries(referrals).map(([a, m]) => [a, outcomes.map((o) => m[o])])),
      },
    },
  };
}

// ---- reading a published table

async function readTable(page, id) {
  return page.$eval(`table#${id}`, (t) => {
    const cols = [...t.querySelectorAll('thead th')].slice(1).map((c) => c.textContent.trim());
    const rows = [...t.querySelectorAll('tbody tr')].map((tr) => ({
      label: tr.querySelector('th').textContent.trim(),
      cells: [...tr.querySelectorAll('td')].map((c) => c.textContent.trim()),
    }));
    const foot = [...t.querySelectorAll('tfoot td')].map((c) => c.textContent.trim());
    // A column of row totals is headed "Total": not one of the table's columns.
    if (cols[cols.length - 1] === 'Total' && foot.length === cols.length) cols.pop();
    return { cols, rows, foot };
  });
}

/// Checks one shown value against its true count.
function checkShown(shown, trueCount, what, threshold = THRESHOLD) {
  if (trueCount === 0) checkEq(shown, '0', `${what}: a zero is shown as 0`);
  else if (trueCount < threshold) checkEq(shown, `<${threshold}`, `${what}: the small count ${trueCount} is shown as <${threshold}`);
  else check(shown === String(trueCount) || shown === '[c]', `${what}: the count ${trueCount} is shown exactly or as [c]`, shown);
}

/// Every table of the report shown now, against the truth at `threshold`;
/// returns them as shown. A table may be withheld at a high threshold.
async function checkTables(page, T, threshold) {
  const shownTables = {};
  for (const [id, t] of Object.entries(T.tables)) {
    const shown = await readTable(page, id).catch(() => null);
    if (shown === null && threshold > THRESHOLD) {
      const heading = await page.$(`#h-${id}`);
      const withheld = heading ? await page.$eval(`#h-${id}`, (h) => h.parentElement.textContent) : '';
      check(withheld.includes('Withheld'), `#${id} at threshold ${threshold}: shown or withheld`, withheld);
      log(`#${id} is withheld at threshold ${threshold}`);
      continue;
    }
    check(shown !== null, `the report shows table #${id}`);
    shownTables[id] = shown;
    checkEq(shown.cols, t.cols, `#${id}: its columns`);
    checkEq(shown.rows.map((x) => x.label).sort(), Object.keys(t.rows).sort(), `#${id}: its rows`);
    const trueCells = shown.rows.map((x) => t.rows[x.label]);
    const trueTotals = {
      cols: t.cols.map((_, j) => trueCells.reduce((s, row) => s + row[j], 0)),
      rows: trueCells.map((row) => row.reduce((s, x) => s + x, 0)),
    };
    trueTotals.grand = trueTotals.cols.reduce((s, x) => s + x, 0);
    shown.rows.forEach((x, i) => {
      x.cells.slice(0, t.cols.length).forEach((s, j) => checkShown(s, trueCells[i][j], `#${id} ${x.label}/${t.cols[j]}`, threshold));
      if (t.rowTotals) checkShown(x.cells[t.cols.length], trueTotals.rows[i], `#${id} ${x.label}/Total`, threshold);
      else checkEq(x.cells.length, t.cols.length, `#${id}: no row totals`);
    });
    shown.foot.slice(0, t.cols.length).forEach((s, j) => checkShown(s, trueTotals.cols[j], `#${id} Total/${t.cols[j]}`, threshold));
    if (t.rowTotals) checkShown(shown.foot[t.cols.length], trueTotals.grand, `#${id} Total/Total`, threshold);
    auditDisclosure(`${id} (threshold ${threshold})`, shown, trueCells, trueTotals, threshold);
  }
  return shownTables;
}

await scenario('outcomes', async (browsers) => {
  selfTest();
  const t0 = Date.now();
  // ---- seed the data set through a real tablet
  const tab = new Cli('East tablet');
  tab.enrol(enrolCodeCli(TEAM, 'Femi'));
  const fams = [];
  for (let i = 0; i < CHILD_AGES.length; i++) {
    const id = tab.ok(['family', 'add', '--name', `Family ${String.fromCharCode(65 + i)}`]);
    fams.push(id);
    tab.ok(['member', 'add', id, '--name', `Parent ${i}`, '--role', 'adult', '--relationship', 'mother']);
    CHILD_AGES[i].forEach((age, k) => {
      const args = ['member', 'add', id, '--name', `Child ${i}-${k}`, '--role', 'child'];
      if (age !== null) args.push('--dob', bornAged(age));
      tab.ok(args);
    });
  }
  for (const [i, category, n] of NOTES) {
    for (let k = 0; k < n; k++) tab.ok(['note', 'add', fams[i], '--text', noteSecret(secretNote(`east-${i}-${k}`)), '--category', category]);
  }
  let r = 0;
  for (const [agency, outcome, n] of REFERRALS) {
    for (let k = 0; k < n; k++) {
      const fam = fams[r++ % fams.length];
      const ref = tab.ok(['referral', 'add', fam, '--agency', agency, '--reason', 'support', '--date', today]);
      if (outcome) tab.ok(['referral', 'outcome', fam, ref, '--outcome', outcome]);
    }
  }
  for (const [prison, arrivals] of DAYS) {
    const day = tab.ok(['day', 'create', '--prison', prison, '--date', today]);
    for (const [i, a, c] of arrivals) tab.ok(['day', 'checkin', day, fams[i], '--adults', String(a), '--children', String(c)]);
  }
  for (const [i, reason] of CLOSURES) tab.ok(['family', 'close', fams[i], '--date', today, '--reason', reason]);
  tab.sync();
  log(`seeded ${fams.length} families in ${Date.now() - t0} ms`);
  const T = truth();

  // ---- the manager reads the report
  const { context, page } = await launch();
  browsers.push(context);
  const password = 'granite-meadow-bicycle-7';
  const auth = await setUpAccount(page, env('MANAGER_LINK'), password, 'manager');
  check(auth === null, 'a manager has no second factor');
  await signIn(page, env('MANAGER_NAME'), password, null, 'manager');
  const url = `/console/outcomes?team=${TEAM}&from=${today}&to=${today}`;
  // Projections catch up within about a second of the sync: wait for them.
  for (const until = Date.now() + 15_000; ; await sleep(500)) {
    await page.goto(`${env('RELAY_URL')}${url}`);
    const s = await page.textContent('#supported').catch(() => null);
    const notes = await page.$('table#referrals-by-agency-and-outcome');
    if ((s === String(T.supported) && notes) || Date.now() > until) break;
  }
  // A family's projection may be refreshed again for its last changes:
  // the projector runs every half second.
  await sleep(2_000);
  await visit(page, url, 'outcomes report');
  checkEq(await text(page, '#supported'), String(T.supported), '#supported');
  checkEq(await text(page, '#new-families'), String(T.new), '#new-families');
  await axe(page, 'outcomes report');

  const shownTables = await checkTables(page, T, THRESHOLD);
  // The data set is built so that suppression has work to do.
  const allShown = Object.values(shownTables).flatMap((t) => [...t.rows.flatMap((x) => x.cells), ...t.foot]);
  check(allShown.includes('<5'), 'some counts are suppressed as <5', allShown);
  check(allShown.includes('[c]'), 'some counts are suppressed secondarily as [c]', allShown);

  // ---- the CSV carries the same values
  const csv = await download(page, 'a:has-text("Download CSV")', 'outcomes csv');
  const rows = parseCsv(csv.text);
  checkEq(rows[0], ['table', 'row', 'column', 'count'], 'the outcomes CSV header');
  const value = (table, row, col) => {
    const found = rows.filter((x) => x[0] === table && x[1] === row && x[2] === col);
    check(found.length === 1, `the CSV has one row ${table} / ${row} / ${col}`, found);
    return found[0][3];
  };
  checkEq(value('Families supported', '', ''), String(T.supported), 'CSV: families supported');
  checkEq(value('New families', '', ''), String(T.new), 'CSV: new families');
  const titles = {
    'closures-by-reason': 'Closures by reason',
    'children-supported-by-age': 'Children supported by age',
    'case-notes-by-category': 'Case notes by category',
    'referrals-by-agency-and-outcome': 'Referrals by agency and outcome',
    'family-day-attendance-by-prison': 'Family-day attendance by prison',
  };
  let compared = 0;
  // csv.rs: a cell starting with = + - @ gets a leading apostrophe.
  const asText = (v) => (/^[=+\-@\t\r]/.test(v) ? `'${v}` : v);
  check(rows.some((x) => x[1] === `'${FORMULA}`), 'the CSV makes a formula-like closure reason text', rows.filter((x) => x[0] === 'Closures by reason'));
  check(!rows.some((x) => x.some((c) => c.startsWith('='))), 'no CSV cell starts with =');
  for (const [id, shown] of Object.entries(shownTables)) {
    const title = titles[id];
    for (const x of shown.rows) {
      shown.cols.forEach((c, j) => {
        checkEq(value(title, asText(x.label), c), x.cells[j], `CSV ${title} ${x.label}/${c} as on the page`);
        compared++;
      });
      if (x.cells.length > shown.cols.length) checkEq(value(title, asText(x.label), 'Total'), x.cells[shown.cols.length], `CSV ${title} ${x.label}/Total`);
    }
    shown.cols.forEach((c, j) => checkEq(value(title, 'Total', c), shown.foot[j], `CSV ${title} Total/${c}`));
    if (shown.foot.length > shown.cols.length) checkEq(value(title, 'Total', 'Total'), shown.foot[shown.cols.length], `CSV ${title} Total/Total`);
  }
  log(`the CSV matches the page (${compared} cells)`);
  const direct = await fetchText(page, `/console/outcomes.csv?team=${TEAM}&from=${today}&to=${today}`, 'outcomes csv (request)');
  checkEq(direct.status, 200, 'the outcomes CSV by request');
  checkEq(direct.text, csv.text, 'the CSV by request is the downloaded one');
  // A threshold below the relay's is refused.
  const low = await fetchText(page, `/console/outcomes?team=${TEAM}&from=${today}&to=${today}&threshold=2`, 'outcomes threshold 2');
  checkEq(low.status, 400, 'a threshold below the relay setting is refused');
  // A raised threshold: the same rules at 10.
  await visit(page, `${url}&threshold=10`, 'outcomes report at threshold 10');
  checkEq(await text(page, '#supported'), String(T.supported), '#supported at threshold 10');
  await checkTables(page, T, 10);
  await axe(page, 'outcomes report at threshold 10');

  // A period with nothing in it: every table empty, and the CSV still
  // downloads (a multi-column table without rows has no column totals).
  await visit(page, `/console/outcomes?team=${TEAM}&from=2000-01-01&to=2000-12-31`, 'outcomes report of an empty period');
  checkEq(await text(page, '#supported'), '0', 'no family supported in 2000');
  const emptyCsv = await fetchText(page, `/console/outcomes.csv?team=${TEAM}&from=2000-01-01&to=2000-12-31`, 'outcomes csv (empty period)').catch((e) => ({ status: `network error: ${e.message.split('\n')[0]}` }));
  checkEq(emptyCsv.status, 200, 'the outcomes CSV of a period without family days downloads');
  checkNoLeaks();
});
