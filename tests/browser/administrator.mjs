// Scenarios 1, 2, 3 (and the administrator's pages of 6, 8, 9): an
// office administrator sets up their account from the set-up link, signs
// in, enrols a tablet from the Devices page (the QR code decoded from a
// screenshot), revokes it, and reads a family day three tablets recorded.
//
// Extra environment: ADMIN_LINK (set-up link of an administrator named
// ADMIN_NAME), LIVE_HANDSHAKE=1 when console.rs holds an open sync
// connection of the first tablet and waits for its cut.

import fs from 'node:fs';
import path from 'node:path';

import {
  Cli,
  WORK,
  axe,
  bareId,
  check,
  checkEq,
  checkNoLeaks,
  decodeQr,
  enrolCodeCli,
  env,
  fetchText,
  launch,
  log,
  noteSecret,
  parseCsv,
  record,
  scenario,
  secretNote,
  setUpAccount,
  signIn,
  sleep,
  submit,
  tableRows,
  text,
  visit,
  download,
} from './lib.mjs';

const today = new Date().toISOString().slice(0, 10);
const PASSWORD = 'violet-harbour-lantern-42';

async function waitForFile(file, ms) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (fs.existsSync(file)) return true;
    await sleep(100);
  }
  return false;
}

await scenario('administrator', async (browsers) => {
  const name = env('ADMIN_NAME');
  const { context, page } = await launch();
  browsers.push(context);

  // ---- 1. Set-up and sign-in
  const t1 = Date.now();
  const home = await page.goto(`${env('RELAY_URL')}/console`);
  check(new URL(page.url()).pathname === '/console/login', 'signed out, /console leads to the sign-in page', page.url());
  await record(page, 'signed out home -> login', home);
  await axe(page, 'sign-in page');
  const auth = await setUpAccount(page, env('ADMIN_LINK'), PASSWORD, 'administrator', { axeCheck: true });
  check(auth !== null, 'an administrator gets a second factor at set-up');
  // The set-up link works once.
  await visit(page, env('ADMIN_LINK'), 'used set-up link', 404);
  check((await page.textContent('main')).includes('not valid'), 'a used set-up link says it is not valid');
  await signIn(page, name, PASSWORD, await auth.code(), 'administrator');
  const nav = await page.$$eval('nav[aria-label=Console] a', (as) => as.map((a) => a.textContent.trim()));
  checkEq(nav, ['Devices', 'Teams', 'Family days', 'Outcomes', 'Audit', 'Status'], "the administrator's navigation");
  await axe(page, 'home');
  log(`scenario 1 (set-up and sign-in) passed in ${Date.now() - t1} ms`);

  // ---- 2. Enrol from the Devices page; the QR code decoded from a screenshot
  const t2 = Date.now();
  await visit(page, '/console/devices', 'devices');
  await axe(page, 'devices');
  async function enrolOnPage(team, worker) {
    await visit(page, '/console/devices', `devices before enrolling ${worker}`);
    await page.fill('#team', team);
    await page.fill('#worker', worker);
    await submit(page, 'form[action="/console/devices/enrol"] button[type=submit]', `enrolment code for ${worker}`);
    const code = await text(page, '#enrolment-code');
    check(/^[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}$/.test(code), 'the enrolment code reads XXXX-XXXX-XXXX', code);
    const heading = await text(page, '#code-heading');
    check(heading.includes(worker) && heading.includes(team), 'the code is labelled with worker and team', heading);
    const png = path.join(WORK(), `qr-${worker}.png`);
    const qr = await page.$('#enrolment-qr');
    check(qr !== null, 'the page shows #enrolment-qr');
    await qr.screenshot({ path: png });
    fs.copyFileSync(png, path.join(env('SHOTS_DIR'), `qr-${worker}.png`));
    const decoded = decodeQr(png);
    const m = /^linkbook:\/\/enrol\?code=([A-Z0-9-]+)(&server=.*)?$/.exec(decoded);
    check(m !== null, 'the QR code holds linkbook://enrol?code=...', decoded);
    checkEq(m[1], code, 'the QR code holds the code shown');
    return code;
  }
  const codeA = await enrolOnPage('north', 'Asha');
  await axe(page, 'devices with an enrolment shown');
  const asha = new Cli('Asha tablet');
  asha.enrol(codeA);
  // The code works once.
  const again = new Cli('Thief tablet');
  const reuse = again.run(['enrol', '--server', env('RELAY_URL'), '--code', codeA, '--ca', env('RELAY_CA')]);
  check(reuse.code !== 0, 'an enrolment code works once', reuse);
  const familyName = 'Okafor';
  const family = asha.ok(['family', 'add', '--name', familyName]);
  const note = noteSecret(secretNote('asha'));
  asha.ok(['note', 'add', family, '--text', note, '--category', 'visit']);
  asha.sync();

  const codeB = await enrolOnPage('north', 'Ben');
  const ben = new Cli('Ben tablet');
  ben.enrol(codeB);
  ben.sync();
  const benFamilies = ben.families();
  check(
    benFamilies.some((f) => bareId(f.id) === bareId(family) && f.name === familyName),
    "the second tablet of the team has the first tablet's family after a sync",
    benFamilies,
  );
  const benNotes = ben.json(['note', 'list', family]);
  check(benNotes.some((n) => n.text === note), "the second tablet has the first tablet's note", benNotes);

  // The devices list shows both tablets.
  await visit(page, '/console/devices', 'devices with two tablets');
  const ashaId = asha.deviceId();
  const row = await page.$(`tr[data-device="${ashaId}"]`);
  check(row !== null, "the Devices page lists the first tablet's id", ashaId);
  const cells = await row.$$eval('td', (tds) => tds.map((t) => t.textContent.trim()));
  check(cells[0].startsWith('Asha tablet') && cells[1] === 'north' && cells[2] === 'Asha', 'the row names device, team and worker', cells);
  check(cells[4] !== 'never', 'the row shows a last sync', cells);
  checkEq(cells[7], 'no', 'the tablet is not revoked yet');

  if (process.env.LIVE_HANDSHAKE) {
    // console.rs opens a sync connection with the tablet's credentials.
    fs.writeFileSync(path.join(WORK(), 'a-ready'), asha.dir);
    check(await waitForFile(path.join(WORK(), 'a-live'), 30_000), 'console.rs opened a live connection of the tablet');
  }

  // Revoke from the page: the row's link, the confirmation, the button.
  const [confirmPage] = await Promise.all([page.waitForNavigation(), page.click(`tr[data-device="${ashaId}"] a:has-text("Revoke")`)]);
  check(new URL(page.url()).pathname === `/console/devices/${ashaId}/revoke`, 'the Revoke link opens the confirmation', page.url());
  await record(page, 'revoke confirmation', confirmPage);
  check((await page.textContent('main')).includes('Asha tablet'), 'the confirmation names the device');
  await axe(page, 'revoke confirmation');
  await submit(page, 'button:has-text("Revoke device")', 'revoked');
  check(new URL(page.url()).pathname === '/console/devices', 'revoking leads back to Devices', page.url());
  const revokedCells = await page.$$eval(`tr[data-device="${ashaId}"] td`, (tds) => tds.map((t) => t.textContent.trim()));
  check(revokedCells[7] !== 'no' && /\d{4}-\d{2}-\d{2}/.test(revokedCells[7]), 'the row shows when the tablet was revoked', revokedCells);
  checkEq(revokedCells[6], 'revoked', 'the lease column says revoked');
  check((await page.$(`tr[data-device="${ashaId}"] a:has-text("Revoke")`)) === null, 'a revoked tablet has no Revoke link');
  if (process.env.LIVE_HANDSHAKE) fs.writeFileSync(path.join(WORK(), 'a-revoked'), '');
  const refused = asha.run(['sync']);
  checkEq(refused.code, 6, 'the revoked tablet\'s next sync exits with the revoked code (6)');
  check(/revoked/i.test(refused.stderr), 'the revoked tablet is told why', refused.stderr);
  const wiped = asha.run(['family', 'list', '--json']);
  check(wiped.code !== 0 || JSON.parse(wiped.stdout).length === 0, 'the revoked tablet holds no family any more', wiped);
  ben.sync();
  log(`scenario 2 (enrol with the QR code, revoke) passed in ${Date.now() - t2} ms`);

  // ---- 3. A family day recorded by three tablets
  const t3 = Date.now();
  const cara = new Cli('Cara tablet');
  cara.enrol(enrolCodeCli('north', 'Cara'));
  const dev = new Cli('Dev tablet');
  dev.enrol(enrolCodeCli('north', 'Dev'));
  const families = {};
  for (const n of ['Achebe', 'Brown', 'Chen', 'Dlamini', 'Evans']) {
    families[n] = ben.ok(['family', 'add', '--name', n]);
    ben.ok(['note', 'add', families[n], '--text', noteSecret(secretNote(`day-${n}`)), '--category', 'phone_call']);
  }
  const prison = 'HMP Leeds';
  const day = ben.ok(['day', 'create', '--prison', prison, '--date', today, '--capacity', '40']);
  // A prison name with markup in it: shown as text, never run.
  const markup = 'HMP <img src=x id=injected> & "Co"';
  ben.ok(['day', 'create', '--prison', markup, '--date', today]);
  const bookings = { Achebe: [2, 3], Brown: [1, 1], Chen: [1, 2], Dlamini: [2, 2], Evans: [1, 4] };
  for (const [n, [a, c]] of Object.entries(bookings)) {
    ben.ok(['day', 'book', day, families[n], '--adults', String(a), '--children', String(c)]);
  }
  ben.sync();
  cara.sync();
  dev.sync();
  // Each checks in different families; Cara and Dev both check in Dlamini
  // offline (the same head count): one attendance, by both.
  const checkins = { Achebe: [[cara], 2, 3], Brown: [[cara], 1, 1], Chen: [[dev], 1, 2], Dlamini: [[cara, dev], 2, 2] };
  for (const [n, [by, a, c]] of Object.entries(checkins)) {
    for (const t of by) t.ok(['day', 'checkin', day, families[n], '--adults', String(a), '--children', String(c)]);
  }
  cara.sync();
  dev.sync();
  ben.sync();
  cara.sync();
  const shown = ben.json(['day', 'show', day]);
  checkEq(shown.attendance.length, 4, 'the merged day on a tablet has four attendances');
  const expected = {
    booked: Object.keys(bookings).length,
    attended: Object.keys(checkins).length,
    adults: Object.values(checkins).reduce((s, [, a]) => s + a, 0),
    children: Object.values(checkins).reduce((s, [, , c]) => s + c, 0),
  };
  log('family day expected', expected);

  // The Family days page lists it (projections catch up within about a second).
  let listed = null;
  let daysPage = null;
  for (const until = Date.now() + 15_000; Date.now() < until; await sleep(500)) {
    daysPage = await page.goto(`${env('RELAY_URL')}/console/family-days`);
    const rows = await tableRows(page, '#family-days').catch(() => []);
    listed = rows.find((r) => r[0] === today && r[1] === prison);
    if (listed && listed[4] === String(expected.attended) && listed[5] === String(expected.adults)) break;
  }
  // The day's projection may be refreshed once more (every half second).
  await sleep(1_500);
  daysPage = await page.goto(`${env('RELAY_URL')}/console/family-days`);
  listed = (await tableRows(page, '#family-days').catch(() => [])).find((r) => r[0] === today && r[1] === prison);
  await record(page, 'family days', daysPage);
  check(listed !== undefined && listed !== null, 'the Family days page lists the day', listed);
  checkEq(listed, [today, prison, 'north', String(expected.booked), String(expected.attended), String(expected.adults), String(expected.children)], 'the day\'s row on Family days');
  check(listed && (await tableRows(page, '#family-days')).some((r) => r[1] === markup), 'a prison name with markup is shown as its text', await tableRows(page, '#family-days'));
  checkEq(await page.$$eval('#injected, #family-days img', (els) => els.length), 0, 'markup in a prison name makes no element');
  await axe(page, 'family days');
  await submit(page, `#family-days tr:has(td:text-is("${prison}")) a:has-text("${today}")`, 'a family day');
  checkEq(await text(page, '#booked'), String(expected.booked), '#booked');
  checkEq(await text(page, '#attended'), String(expected.attended), '#attended');
  checkEq(await text(page, '#adults'), String(expected.adults), '#adults');
  checkEq(await text(page, '#children'), String(expected.children), '#children');
  check((await page.$('svg.chart')) !== null, 'the arrivals chart is drawn');
  const bars = await page.$$eval('svg.chart text.value', (ts) => ts.reduce((s, t) => s + Number(t.textContent), 0));
  checkEq(bars, expected.attended, 'the chart counts every arrival once');
  const rows = await tableRows(page, '#check-ins');
  const byFamily = Object.fromEntries(rows.map((r) => [bareId(r[1]), r]));
  checkEq(rows.length, expected.attended, 'one check-in row per family attended');
  for (const [n, [by, a, c]] of Object.entries(checkins)) {
    const r = byFamily[bareId(families[n])];
    check(r !== undefined, `the check-ins table lists ${n}`, rows);
    checkEq([r[2], r[3]], [String(a), String(c)], `${n}'s head count`);
    const names = r[4].split(',').map((s) => s.trim()).sort();
    checkEq(names, by.map((t) => t.name).sort(), `${n} checked in by`);
  }
  await axe(page, 'a family day');
  const csv = await download(page, 'a:has-text("Download CSV")', 'family day csv');
  const parsed = parseCsv(csv.text);
  checkEq(parsed[0], ['prison', 'date', 'family', 'booked_adults', 'booked_children', 'attended', 'adults', 'children', 'arrived_at', 'checked_in_by'], 'the family-day CSV header');
  checkEq(parsed.length - 1, Object.keys(bookings).length, 'one CSV row per family booked or attended');
  for (const [n, [ba, bc]] of Object.entries(bookings)) {
    const r = parsed.find((x) => bareId(x[2]) === bareId(families[n]));
    check(r !== undefined, `the CSV has ${n}`, parsed);
    const ci = checkins[n];
    checkEq(
      [r[0], r[1], r[3], r[4], r[5], r[6], r[7]],
      [prison, today, String(ba), String(bc), ci ? 'yes' : 'no', ci ? String(ci[1]) : '', ci ? String(ci[2]) : ''],
      `${n}'s CSV row`,
    );
    if (ci) {
      check(!Number.isNaN(Date.parse(r[8])), `${n}'s arrival time is a timestamp`, r[8]);
      checkEq(r[9].split(';').map((s) => s.trim()).sort(), ci[0].map((t) => t.name).sort(), `${n}'s CSV checked_in_by`);
    } else {
      checkEq([r[8], r[9]], ['', ''], `${n} did not arrive`);
    }
  }
  const viaRequest = await fetchText(page, new URL(await page.getAttribute('a:has-text("Download CSV")', 'href'), env('RELAY_URL')).href, 'family day csv (request)');
  checkEq(viaRequest.status, 200, 'the family-day CSV by request');
  check(viaRequest.headers['content-type'].startsWith('text/csv'), 'the CSV is text/csv', viaRequest.headers);
  log(`scenario 3 (family day) passed in ${Date.now() - t3} ms`);

  // ---- the administrator's other pages: accessibility, screenshots
  for (const [url, label] of [
    ['/console/teams', 'teams'],
    [`/console/outcomes?team=north&from=${today}&to=${today}`, 'outcomes'],
    ['/console/audit', 'audit'],
    ['/console/status', 'status'],
  ]) {
    await visit(page, url, label);
    await axe(page, label);
  }
  await visit(page, '/console/audit?action=revoked', 'audit: revoked');
  const revokedAudit = await tableRows(page, '#audit');
  check(revokedAudit.some((r) => r[1] === 'revoked' && r[2] === `staff:${name}` && r[3] === ashaId), 'the audit names the administrator for the revocation', revokedAudit);
  await visit(page, '/console/data-protection', 'data protection (administrator)', 403);
  checkNoLeaks();
});
