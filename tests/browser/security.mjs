// Scenario 5: roles and session security. A manager sees and may do only
// what a manager may; forms without their CSRF token are refused; a wrong
// TOTP is refused; the sign-in brake; the idle timeout; the cookie's
// attributes; sign-out ends the session.
//
// Extra environment:
//   MANAGER_LINK/MANAGER_NAME, ADMIN_LINK/ADMIN_NAME   on RELAY_URL
//   BRAKE_URL, BRAKE_LINK/BRAKE_NAME (a manager)        --console-max-failures 3
//   IDLE_URL, IDLE_LINK/IDLE_NAME (a manager)           --console-idle-secs 3

import { spawnSync } from 'node:child_process';

import {
  axe,
  check,
  checkEq,
  csrfOf,
  env,
  fetchText,
  launch,
  log,
  postForm,
  record,
  scenario,
  setUpAccount,
  signIn,
  sleep,
  submit,
  text,
  nowStep,
  totpAt,
  visit,
} from './lib.mjs';

const MANAGER_PASSWORD = 'orchid-tunnel-pebble-93';
const ADMIN_PASSWORD = 'copper-willow-stanza-18';

await scenario('security', async (browsers) => {
  const relay = env('RELAY_URL');

  // ---- a manager
  const t1 = Date.now();
  const m = await launch();
  browsers.push(m.context);
  const mp = m.page;
  await visit(mp, env('MANAGER_LINK'), 'manager set-up page');
  check((await mp.$('#totp')) === null, 'a manager is not asked for a TOTP code at set-up');
  // A weak password is refused with a reason.
  await mp.fill('#password', 'Password123!');
  await mp.fill('#password2', 'Password123!');
  await submit(mp, 'button[type=submit]', 'manager set-up with a common password', 400);
  check((await mp.textContent('main')).includes('most common'), 'a common password is refused as such', await mp.textContent('main'));
  const auth = await setUpAccount(mp, env('MANAGER_LINK'), MANAGER_PASSWORD, 'manager');
  check(auth === null, 'no authenticator for a manager');
  await signIn(mp, env('MANAGER_NAME'), MANAGER_PASSWORD, null, 'manager');
  const nav = await mp.$$eval('nav[aria-label=Console] a', (as) => as.map((a) => a.textContent.trim()));
  checkEq(nav, ['Teams', 'Family days', 'Outcomes'], "the manager's navigation (no Devices, no Data protection)");

  // Cookies: the session cookie's attributes.
  const cookies = await m.context.cookies(relay);
  const session = cookies.find((c) => c.name === '__Host-linkbook-session');
  check(session !== undefined, 'the session cookie is set', cookies);
  checkEq({ httpOnly: session.httpOnly, secure: session.secure, sameSite: session.sameSite, path: session.path }, { httpOnly: true, secure: true, sameSite: 'Strict', path: '/' }, 'the session cookie is HttpOnly, Secure, SameSite=Strict');
  check(session.expires === -1, 'the session cookie has no lifetime of its own (a session cookie)', session);
  check(/^[0-9a-f]{64}$/.test(session.value), 'the session cookie is 256 random bits in hex', session.value.length);

  for (const p of ['/console/devices', '/console/data-protection', '/console/audit', '/console/status', '/console/devices/x/revoke']) {
    await visit(mp, p, `manager GET ${p}`, 403);
    check((await mp.textContent('main')).includes('Your role does not allow'), `${p}: the refusal says why`);
  }
  await visit(mp, '/console/teams', 'manager teams');
  check((await mp.$('form[action="/console/teams/policy"]')) === null, 'a manager gets no policy form');
  const csrf = await csrfOf(mp);
  const enrol = await postForm(mp, '/console/devices/enrol', { csrf, team: 'north', worker: 'Mallory', expires_hours: '24' });
  checkEq(enrol.status, 403, "a manager's enrol POST with their own valid CSRF token");
  check(enrol.text.includes('Your role does not allow'), 'the enrol refusal is about the role', enrol.text.slice(0, 300));
  const purge = await postForm(mp, '/console/data-protection/purge', { csrf, step: 'confirm', family: '4NMNnkrTbDoB9Y7UpPgFbmLizNsV', confirm: '4NMNnkrTbDoB9Y7UpPgFbmLizNsV', reason: 'x' });
  checkEq(purge.status, 403, "a manager's purge POST with their own valid CSRF token");
  check(purge.text.includes('Your role does not allow'), 'the purge refusal is about the role', purge.text.slice(0, 300));
  for (const p of ['/console/data-protection/export', '/console/data-protection/retention', '/console/teams/policy']) {
    const r = await postForm(mp, p, { csrf, name: 'Okafor', team: 'north' });
    checkEq(r.status, 403, `a manager's POST ${p}`);
  }
  const csvAudit = await fetchText(mp, '/console/audit.csv');
  checkEq(csvAudit.status, 403, "a manager's audit CSV");
  log(`manager checks passed in ${Date.now() - t1} ms`);

  // ---- an administrator: CSRF, wrong TOTP
  const t2 = Date.now();
  const a = await launch();
  browsers.push(a.context);
  const ap = a.page;
  const adminAuth = await setUpAccount(ap, env('ADMIN_LINK'), ADMIN_PASSWORD, 'administrator');
  const setupStep = adminAuth.last;
  // Login CSRF: a sign-in posted without the form's token is refused.
  const noLoginCsrf = await postForm(ap, `${relay}/console/login`, { name: env('ADMIN_NAME'), password: ADMIN_PASSWORD, totp: '000000' });
  checkEq(noLoginCsrf.status, 403, 'a sign-in without the login form token is refused');
  await signIn(ap, env('ADMIN_NAME'), ADMIN_PASSWORD, adminAuth.wrongCode(), 'administrator with a wrong TOTP', 401);
  check((await ap.textContent('main')).includes('The name, password or code is not right.'), 'a wrong TOTP is refused without saying which part was wrong');
  check((await ap.$('form.signout')) === null, 'a refused sign-in shows no signed-in header');
  await signIn(ap, env('ADMIN_NAME'), 'copper-willow-stanza-19', totpAt(adminAuth.secret, nowStep()), 'administrator with a wrong password', 401);
  // The code entered at set-up is a used time step too (accounts.rs: each
  // step accepted once per account).
  await visit(ap, `${relay}/console/login`, 'administrator replaying the set-up code');
  await ap.fill('#name', env('ADMIN_NAME'));
  await ap.fill('#password', ADMIN_PASSWORD);
  await ap.fill('#totp', totpAt(adminAuth.secret, setupStep));
  const [replay] = await Promise.all([ap.waitForNavigation(), ap.click('button[type=submit]')]);
  await record(ap, 'set-up code replayed', replay);
  checkEq(replay.status(), 401, 'the set-up code is not accepted again');
  await signIn(ap, env('ADMIN_NAME'), ADMIN_PASSWORD, await adminAuth.code(), 'administrator');
  // Positive control: a proper request works, so the refusals below are the CSRF check's.
  await visit(ap, '/console/devices', 'administrator devices');
  const adminCsrf = await csrfOf(ap);
  const good = await postForm(ap, '/console/devices/enrol', { csrf: adminCsrf, team: 'north', worker: 'Control', expires_hours: '24' });
  checkEq(good.status, 200, 'an enrol POST with the right CSRF token works');
  check(good.text.includes('id="enrolment-code"'), 'and shows a code');
  const missing = await postForm(ap, '/console/devices/enrol', { team: 'north', worker: 'Forged', expires_hours: '24' });
  checkEq(missing.status, 403, 'an enrol POST without its CSRF token is refused');
  check(missing.text.includes('This form was not sent from this console session'), 'the refusal is the CSRF one', missing.text.slice(0, 300));
  const wrong = await postForm(ap, '/console/devices/enrol', { csrf: adminCsrf.replace(/^./, (c) => (c === '0' ? '1' : '0')), team: 'north', worker: 'Forged', expires_hours: '24' });
  checkEq(wrong.status, 403, 'an enrol POST with a wrong CSRF token is refused');
  const otherSession = await postForm(mp, '/console/devices/enrol', { csrf: adminCsrf, team: 'north', worker: 'Forged', expires_hours: '24' });
  checkEq(otherSession.status, 403, "another session's CSRF token is refused");
  await visit(ap, '/console/devices', 'devices after forged posts');
  const workers = await ap.$$eval('#devices tbody tr td:nth-child(3)', (tds) => tds.map((t) => t.textContent.trim()));
  check(!workers.includes('Forged'), 'no forged enrolment was made', workers);
  const auditRows = (await fetchText(ap, '/console/audit.csv?action=enrolment+code+issued')).text;
  checkEq(auditRows.trim().split('\n').length - 1, 1, 'one enrolment code was issued (the control), none forged');

  // Sign-out ends the session; the old cookie opens nothing.
  const before = (await a.context.cookies(relay)).find((c) => c.name === '__Host-linkbook-session');
  await submit(ap, 'form.signout button[type=submit]', 'signed out');
  check(new URL(ap.url()).pathname === '/console/login', 'sign-out leads to the sign-in page', ap.url());
  await a.context.addCookies([before]);
  const resp = await ap.goto(`${relay}/console/devices`);
  await record(ap, 'old cookie after sign-out', resp);
  check(new URL(ap.url()).pathname === '/console/login', 'the cookie of a signed-out session opens nothing', ap.url());
  log(`administrator checks passed in ${Date.now() - t2} ms`);

  // Disabling an account (linkbook-server admin disable) ends its session at once.
  const disabled = spawnSync(env('LINKBOOK_SERVER_BIN'), ['--data', env('RELAY_DATA'), 'admin', 'disable', '--name', env('MANAGER_NAME')], { encoding: 'utf8', timeout: 30_000 });
  checkEq(disabled.status, 0, `admin disable: ${disabled.stderr}`);
  const afterDisable = await mp.goto(`${relay}/console/teams`);
  await record(mp, 'manager after the account was disabled', afterDisable);
  check(new URL(mp.url()).pathname === '/console/login', "a disabled account's session ends at once", mp.url());
  await signIn(mp, env('MANAGER_NAME'), MANAGER_PASSWORD, null, 'disabled manager', 401);

  // ---- the sign-in brake
  const t3 = Date.now();
  const brake = env('BRAKE_URL');
  const b = await launch();
  browsers.push(b.context);
  const bp = b.page;
  const BRAKE_PASSWORD = 'saffron-kettle-harbour-55';
  await setUpAccount(bp, env('BRAKE_LINK'), BRAKE_PASSWORD, 'brake manager', { origin: brake });
  for (let i = 1; i <= 3; i++) {
    await signIn(bp, env('BRAKE_NAME'), `wrong-password-number-${i}`, null, `brake: wrong password ${i}`, 401, brake);
  }
  const locked = await signIn(bp, env('BRAKE_NAME'), BRAKE_PASSWORD, null, 'brake: right password after 3 failures', 429, brake);
  const lockedText = await bp.textContent('main');
  check(lockedText.includes('Too many failed sign-ins'), 'the brake says so', lockedText);
  check(Number(locked.headers()['retry-after']) > 0, 'the brake gives Retry-After', locked.headers());
  check((await bp.$('form.signout')) === null, 'no session during the lockout');
  await axe(bp, 'sign-in page with the lockout message');
  log(`brake checks passed in ${Date.now() - t3} ms`);

  // ---- the idle timeout
  const t4 = Date.now();
  const idle = env('IDLE_URL');
  const i = await launch();
  browsers.push(i.context);
  const ip = i.page;
  const IDLE_PASSWORD = 'juniper-anchor-velvet-61';
  await setUpAccount(ip, env('IDLE_LINK'), IDLE_PASSWORD, 'idle manager', { origin: idle });
  await signIn(ip, env('IDLE_NAME'), IDLE_PASSWORD, null, 'idle manager', 200, idle);
  await visit(ip, `${idle}/console/teams`, 'idle: teams at once');
  await sleep(4_000);
  const expired = await ip.reload();
  await record(ip, 'idle: reloaded after 4 s', expired);
  const landed = new URL(ip.url());
  checkEq(landed.pathname + landed.search, '/console/login?expired=1', 'after 4 s idle a reload lands on the sign-in page, expired');
  check((await text(ip, 'main')).includes('Your session ended. Sign in again.'), 'the sign-in page says the session ended');
  log(`idle timeout checks passed in ${Date.now() - t4} ms`);
});
