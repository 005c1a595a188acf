// Scenario 7 (and the data protection pages of 6, 8, 9): the data
// protection lead exports a family for a subject access request, then
// purges it through the page; the team's tablets lose it at their next
// sync; retention runs; the audit names who purged, and downloads.
//
// Extra environment: DP_LINK, DP_NAME (a data-protection account).

import { spawnSync } from 'node:child_process';

import {
  Cli,
  axe,
  bareId,
  check,
  checkEq,
  checkNoLeaks,
  download,
  enrolCodeCli,
  env,
  launch,
  log,
  noteSecret,
  parseCsv,
  scenario,
  secretNote,
  setUpAccount,
  signIn,
  submit,
  tableRows,
  text,
  visit,
} from './lib.mjs';

const PASSWORD = 'thistle-orbit-marble-27';

await scenario('data-protection', async (browsers) => {
  const t0 = Date.now();
  const name = env('DP_NAME');
  const tabA = new Cli('West tablet A');
  tabA.enrol(enrolCodeCli('west', 'Gita'));
  const tabB = new Cli('West tablet B');
  tabB.enrol(enrolCodeCli('west', 'Hugo'));
  const subject = tabA.ok(['family', 'add', '--name', 'Nakamura', '--address', '4 Quay Street']);
  tabA.ok(['member', 'add', subject, '--name', 'Yui Nakamura', '--role', 'adult', '--relationship', 'partner']);
  const subjectNote = noteSecret(secretNote('subject'));
  tabA.ok(['note', 'add', subject, '--text', subjectNote, '--category', 'helpline']);
  const other = tabA.ok(['family', 'add', '--name', 'Lindqvist']);
  tabA.ok(['note', 'add', other, '--text', noteSecret(secretNote('other')), '--category', 'visit']);
  tabA.sync();
  tabB.sync();
  checkEq(tabB.families().map((f) => bareId(f.id)).sort(), [bareId(subject), bareId(other)].sort(), 'the second tablet holds both families');

  const { context, page } = await launch();
  browsers.push(context);
  const auth = await setUpAccount(page, env('DP_LINK'), PASSWORD, 'data protection');
  check(auth !== null, 'a data protection account has a second factor');
  await signIn(page, name, PASSWORD, await auth.code(), 'data protection');
  const nav = await page.$$eval('nav[aria-label=Console] a', (as) => as.map((a) => a.textContent.trim()));
  checkEq(nav, ['Teams', 'Audit', 'Data protection', 'Status'], "the data protection lead's navigation");
  await visit(page, '/console/devices', 'data protection: devices', 403);
  await visit(page, '/console/outcomes', 'data protection: outcomes', 403);
  await visit(page, '/console/data-protection', 'data protection');
  await axe(page, 'data protection');

  // ---- subject access export first
  await page.fill('#sar-name', 'nakamura');
  const sar = await download(page, 'form[action="/console/data-protection/export"] button[type=submit]', 'subject access export', { keep: false });
  check(/^subject-access-\d{8}-\d{6}\.json$/.test(sar.name), 'the export is a JSON file', sar.name);
  const exported = JSON.parse(sar.text);
  checkEq(exported.families.map((f) => bareId(f.family_id)), [bareId(subject)], 'the export holds the subject\'s family only');
  check(sar.text.includes(subjectNote), 'the export holds the family\'s case notes (it is the whole case file)');
  check(sar.text.includes('Yui Nakamura'), 'the export holds the person');
  check(exported.families[0].matched_at.length >= 1, 'the export says where the name matched', exported.families[0].matched_at);

  // ---- purge through the page: review, a mistyped id, then the right one
  await visit(page, '/console/data-protection', 'data protection before the purge');
  await page.fill('#purge-id', subject);
  await page.fill('#purge-reason', 'erasure request by the family');
  await submit(page, 'button:has-text("Review purge")', 'purge confirmation');
  const review = await page.textContent('main');
  check(review.includes(bareId(subject)) && review.includes('west'), 'the confirmation names the family and its team', review);
  check(review.includes("team's 2 devices"), 'the confirmation counts the team\'s devices', review);
  await axe(page, 'purge confirmation');
  await page.fill('#confirm', bareId(other));
  await submit(page, 'button:has-text("Purge family")', 'purge with a mistyped id', 400);
  check((await page.textContent('main')).includes('nothing was purged'), 'a mistyped id purges nothing');
  tabB.sync();
  check(tabB.families().some((f) => bareId(f.id) === bareId(subject)), 'after the refused purge the family is still there');
  await visit(page, '/console/data-protection', 'data protection again');
  await page.fill('#purge-id', subject);
  await page.fill('#purge-reason', 'erasure request by the family');
  await submit(page, 'button:has-text("Review purge")', 'purge confirmation again');
  await page.fill('#confirm', subject);
  await submit(page, 'button:has-text("Purge family")', 'purged');
  const done = await text(page, 'p.notice');
  check(done.includes('is purged') && done.includes(bareId(subject)), 'the page says the family is purged', done);
  await axe(page, 'data protection after a purge');

  const syncB = tabB.run(['sync']);
  checkEq(syncB.code, 0, 'the tablet syncs after the purge');
  check(syncB.stderr.includes('the office purged'), 'the tablet is told of the purge', syncB.stderr);
  checkEq(tabB.families().map((f) => bareId(f.id)), [bareId(other)], 'the tablet no longer has the purged family');
  tabA.sync();
  checkEq(tabA.families().map((f) => bareId(f.id)), [bareId(other)], 'the other tablet too');
  const afterSar = tabA.run(['family', 'show', subject, '--json']);
  check(afterSar.code !== 0, 'the purged family cannot be opened on the tablet', afterSar);

  // ---- retention now: the other family closed today, the team's
  // retention set to 0 days (by the administrator's command line)
  await submit(page, 'button:has-text("Run retention now")', 'retention run (nothing due)');
  const none = await text(page, 'p.notice');
  checkEq(none, "Retention ran: 0 closed cases were past their team's retention and purged.", 'retention with nothing due says so');
  tabA.ok(['family', 'close', other, '--date', new Date().toISOString().slice(0, 10), '--reason', 'support complete']);
  tabA.sync();
  const policy = spawnSync(env('LINKBOOK_SERVER_BIN'), ['--data', env('RELAY_DATA'), 'team', 'policy', '--team', 'west', '--retention-days', '0'], { encoding: 'utf8', timeout: 30_000 });
  checkEq(policy.status, 0, `team policy: ${policy.stderr}`);
  await submit(page, 'button:has-text("Run retention now")', 'retention run');
  const ran = await text(page, 'p.notice');
  checkEq(ran, "Retention ran: 1 closed case was past their team's retention and purged.", 'retention says what it did');
  tabB.sync();
  checkEq(tabB.families(), [], 'after retention the tablet holds no family of the team');

  // ---- the export now finds nothing
  await page.fill('#sar-name', 'nakamura');
  const after = await download(page, 'form[action="/console/data-protection/export"] button[type=submit]', 'subject access export after the purge', { keep: false });
  checkEq(JSON.parse(after.text).families, [], 'after the purge the export finds nothing');

  // ---- the audit
  await visit(page, '/console/audit', 'audit');
  await page.selectOption('#f-action', 'purged');
  await submit(page, 'form.filters button[type=submit]', 'audit filtered: purged');
  check(page.url().includes('action=purged'), 'the filter is in the address', page.url());
  const rows = await tableRows(page, '#audit');
  check(rows.length >= 1 && rows.every((r) => r[1] === 'purged'), 'only purges are listed', rows);
  check(rows.some((r) => r[2] === `staff:${name}` && bareId(r[5]) === bareId(subject) && r[4] === 'west'), `the purge is listed as staff:${name}'s`, rows);
  check(rows.some((r) => bareId(r[5]) === bareId(other)), 'the retention purge is listed', rows);
  const retentionBy = rows.find((r) => bareId(r[5]) === bareId(other))?.[2];
  checkEq(retentionBy, `staff:${name}`, 'a purge by "Run retention now" is audited as the member of staff who ran it');
  await axe(page, 'audit filtered');
  const csv = await download(page, 'a:has-text("Download CSV")', 'audit csv');
  const parsed = parseCsv(csv.text);
  checkEq(parsed[0], ['at', 'action', 'who', 'device', 'team', 'document', 'address', 'received_at'], 'the audit CSV header');
  check(parsed.slice(1).length >= 1 && parsed.slice(1).every((r) => r[1] === 'purged'), 'the CSV has the filter applied', parsed);
  check(parsed.some((r) => r[2] === `staff:${name}` && bareId(r[5]) === bareId(subject)), 'the CSV lists the purge by the account', parsed);
  await visit(page, '/console/audit?action=subject+access+export', 'audit: exports');
  const exports = await tableRows(page, '#audit');
  check(exports.some((r) => r[2] === `staff:${name}` && bareId(r[5]) === bareId(subject)), 'the subject access export is audited as the account\'s', exports);

  for (const [url, label] of [
    ['/console/teams', 'teams (data protection)'],
    ['/console/status', 'status (data protection)'],
  ]) {
    await visit(page, url, label);
    await axe(page, label);
  }
  checkNoLeaks();
  log(`scenario 7 passed in ${Date.now() - t0} ms`);
});
