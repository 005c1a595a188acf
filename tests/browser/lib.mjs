// Shared helpers of the console's browser tests (tests/tests/console.rs runs
// each scenario script with node): Debian's Chromium driven by
// playwright-core, pages recorded (full-page screenshot, HTML, CSP header),
// axe-core, TOTP codes (RFC 6238, HMAC-SHA1, 6 digits, 30 s), the `linkbook`
// CLI as a device, QR codes decoded with zbarimg.
//
// Environment (set by console.rs):
//   RELAY_URL        https://127.0.0.1:PORT of the relay under test
//   RELAY_CA         its development CA (PEM file), for CLI devices
//   LINKBOOK_BIN     the `linkbook` CLI of this build
//   LINKBOOK_SERVER_BIN  the `linkbook-server` binary (admin commands)
//   RELAY_DATA       the relay's data directory (for admin commands)
//   WORK_DIR         a temporary directory: device data dirs, downloads,
//                    the browser's profile, files shared with console.rs
//   SHOTS_DIR        where full-page screenshots go
//   plus per-scenario variables (set-up links, other relays).

import { execFileSync, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from '../npm/node_modules/playwright-core/index.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const AXE_SOURCE = fs.readFileSync(
  path.join(here, '..', 'npm', 'node_modules', 'axe-core', 'axe.min.js'),
  'utf8',
);

/// Every step is bounded: Playwright actions and navigations.
export const ACTION_TIMEOUT_MS = 15_000;

export function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`environment variable ${name} is not set`);
  return v;
}

export const WORK = () => env('WORK_DIR');

// ---------------------------------------------------------------- checks

let checks = 0;
const failures = [];

/// A check that must hold; a failure says what was expected and what was
/// found, and stops the scenario.
export function check(condition, what, details) {
  checks += 1;
  if (!condition) {
    const msg = `CHECK FAILED: ${what}${details === undefined ? '' : `\n  ${typeof details === 'string' ? details : JSON.stringify(details, null, 2)}`}`;
    failures.push(msg);
    throw new Error(msg);
  }
}

export function checkEq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  check(a === e, what, `expected ${e}\n  found    ${a}`);
}


export function log(...args) {
  const t = new Date().toISOString().slice(11, 23);
  console.log(`[${t}]`, ...args);
}

// --------------------------------------------------------------- browser

const visited = []; // { label, url, html }
const downloadsText = []; // { label, text }
let shotCounter = 0;

/// Launches Chromium with a fresh empty profile; `options` go to the context.
export async function launch(options = {}) {
  const profile = fs.mkdtempSync(path.join(WORK(), 'chromium-profile-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    ignoreHTTPSErrors: true,
    acceptDownloads: true,
    viewport: { width: 1280, height: 900 },
    timeout: 30_000,
    ...options,
  });
  context.setDefaultTimeout(ACTION_TIMEOUT_MS);
  context.setDefaultNavigationTimeout(ACTION_TIMEOUT_MS);
  const page = context.pages()[0] ?? (await context.newPage());
  return { context, page };
}

/// Another context (another person's browser) in the same Chromium is not
/// possible with a persistent context; a second launch is.
export async function launchAnother(options = {}) {
  return launch(options);
}

function safeName(s) {
  return s.replace(/[^A-Za-z0-9._-]+/g, '-').slice(0, 80);
}

/// Records the page now shown: a full-page screenshot, its HTML (for the
/// leak check), the CSP of `response` (if given).
export async function record(page, label, response) {
  shotCounter += 1;
  const dir = env('SHOTS_DIR');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${String(shotCounter).padStart(2, '0')}-${safeName(label)}.png`);
  await page.screenshot({ path: file, fullPage: true });
  const html = await page.content();
  visited.push({ label, url: page.url(), html });
  if (response) {
    const csp = response.headers()['content-security-policy'] ?? '';
    check(
      csp.includes("default-src 'self'"),
      `the page "${label}" (${page.url()}) carries a CSP with default-src 'self'`,
      `status ${response.status()}, content-security-policy: ${JSON.stringify(csp)}`,
    );
  }
  return html;
}

export function base() {
  return env('RELAY_URL').replace(/\/$/, '');
}

/// Opens `url` (a path on the relay, or a whole URL), records it, and
/// returns the response; `expect` is the status wanted (200 unless given).
export async function visit(page, url, label, expect = 200) {
  const full = url.startsWith('http') ? url : `${base()}${url}`;
  const response = await page.goto(full, { waitUntil: 'load' });
  check(response !== null, `a response for ${full}`);
  check(
    response.status() === expect,
    `GET ${full} ("${label}") answers ${expect}`,
    `status ${response.status()}, landed on ${page.url()}\n  ${(await page.textContent('main').catch(() => '')) ?? ''}`,
  );
  await record(page, label, response);
  return response;
}

/// Clicks `selector` (a submit button or link) and waits for the page it
/// leads to; records it and checks its status.
export async function submit(page, selector, label, expect = 200) {
  const [response] = await Promise.all([
    page.waitForNavigation({ waitUntil: 'load' }),
    page.click(selector),
  ]);
  check(response !== null, `a response after clicking ${selector} ("${label}")`);
  check(
    response.status() === expect,
    `clicking ${selector} ("${label}") answers ${expect}`,
    `status ${response.status()} at ${page.url()}\n  ${(await page.textContent('main').catch(() => '')) ?? ''}`,
  );
  await record(page, label, response);
  return response;
}

/// The text of `selector`, trimmed; fails if it is missing.
export async function text(page, selector) {
  const el = await page.$(selector);
  check(el !== null, `the page ${page.url()} has ${selector}`);
  return ((await el.textContent()) ?? '').trim();
}

/// A table's body rows as arrays of cell texts (th and td).
export async function tableRows(page, selector, part = 'tbody') {
  return page.$$eval(`${selector} ${part} tr`, (trs) =>
    trs.map((tr) => [...tr.querySelectorAll('th, td')].map((c) => c.textContent.trim())),
  );
}

/// A request made from the page itself (fetch, same origin, with its
/// cookies, redirects not followed): what a script or a hand-made form in
/// this browser sends. Returns { status, headers, text }.
async function fromPage(page, url, init) {
  const full = url.startsWith('http') ? url : `${base()}${url}`;
  return page.evaluate(
    async ({ full, init }) => {
      const body = init.form ? new URLSearchParams(init.form) : undefined;
      const r = await fetch(full, { method: init.method, body, credentials: 'same-origin', redirect: 'manual' });
      return { status: r.status, headers: Object.fromEntries(r.headers.entries()), text: await r.text() };
    },
    { full, init },
  );
}

/// GET `url` with the page's cookies; kept for the leak check when `keep`
/// names it. (A redirect reads as status 0.)
export async function fetchText(page, url, keep) {
  const r = await fromPage(page, url, { method: 'GET' });
  if (keep) downloadsText.push({ label: keep, text: r.text });
  return r;
}

/// POSTs a form (fields as an object) with the page's cookies.
export async function postForm(page, url, fields) {
  return fromPage(page, url, { method: 'POST', form: fields });
}

/// Clicks a download link/button and returns the downloaded file's text.
export async function download(page, selector, label, { keep = true } = {}) {
  const [dl] = await Promise.all([page.waitForEvent('download'), page.click(selector)]);
  const file = path.join(WORK(), `download-${safeName(label)}-${Date.now()}`);
  const failure = await dl.failure();
  if (failure !== null) {
    const href = await page.getAttribute(selector, 'href').catch(() => null);
    const again = href ? await fromPage(page, href, { method: 'GET' }) : null;
    check(false, `the download "${label}" (${selector}) completes`, { failure, url: dl.url(), href, status: again?.status, body: again?.text.slice(0, 300) });
  }
  await dl.saveAs(file);
  const body = fs.readFileSync(file, 'utf8');
  if (keep) downloadsText.push({ label, text: body });
  return { name: dl.suggestedFilename(), text: body };
}

/// axe-core on the page shown, WCAG 2.2 AA: no violation. The page's CSP
/// forbids inline scripts; page.evaluate (DevTools protocol) is not bound by it.
export async function axe(page, label) {
  const loaded = await page.evaluate(() => typeof window.axe !== 'undefined');
  if (!loaded) await page.evaluate(`${AXE_SOURCE}\n;undefined`);
  const violations = await page.evaluate(async (tags) => {
    const r = await window.axe.run(document, { runOnly: { type: 'tag', values: tags } });
    return r.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.map((n) => ({ target: n.target.join(' '), summary: n.failureSummary, html: n.html.slice(0, 200) })),
    }));
  }, ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa']);
  check(violations.length === 0, `axe: no WCAG 2.2 AA violation on "${label}" (${page.url()})`, violations);
  log(`axe: ${label}: no violations`);
}

/// CSRF token of the first form on the page (every console form carries it).
export async function csrfOf(page) {
  const v = await page.$eval('input[name=csrf]', (i) => i.value).catch(() => null);
  check(v && /^[0-9a-f]{64}$/.test(v), `a CSRF field on ${page.url()}`, v);
  return v;
}

// ------------------------------------------------------------------ TOTP

export function base32Decode(s) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  const clean = s.toUpperCase().replace(/[^A-Z2-7]/g, '');
  let bits = 0;
  let value = 0;
  const out = [];
  for (const c of clean) {
    value = (value << 5) | alphabet.indexOf(c);
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

/// RFC 6238 TOTP of `secret` (bytes) for time step `step`.
export function totpAt(secret, step) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = crypto.createHmac('sha1', secret).update(counter).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const bin = ((mac[offset] & 0x7f) << 24) | (mac[offset + 1] << 16) | (mac[offset + 2] << 8) | mac[offset + 3];
  return String(bin % 1_000_000).padStart(6, '0');
}

export const nowStep = () => Math.floor(Date.now() / 1000 / 30);

/// An authenticator for one account: each code it gives is for a step later
/// than the last one used (the relay accepts a step once per account), and
/// within the relay's window (current step or the next: skew 1). When the
/// next usable step is too far ahead it waits for the clock.
export class Authenticator {
  constructor(base32) {
    this.secret = base32Decode(base32);
    this.last = null;
  }

  async code() {
    for (;;) {
      const cur = nowStep();
      const step = this.last === null ? cur : Math.max(cur, this.last + 1);
      if (step <= cur + 1) {
        this.last = step;
        return totpAt(this.secret, step);
      }
      const wait = (cur + 1) * 30_000 - Date.now() + 200;
      log(`TOTP: waiting ${wait} ms for a fresh time step`);
      await sleep(wait);
    }
  }

  /// Six digits that are no code of any step near now.
  wrongCode() {
    const cur = nowStep();
    const near = new Set([-2, -1, 0, 1, 2].map((d) => totpAt(this.secret, cur + d)));
    for (let n = 123456; ; n = (n + 7919) % 1_000_000) {
      const c = String(n).padStart(6, '0');
      if (!near.has(c)) return c;
    }
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, Math.max(0, ms)));

// ------------------------------------------------------------ accounts

/// Uses a set-up link in the browser: reads the TOTP key (when the role has
/// one), sets `password`, enters a fresh code. Returns the Authenticator
/// (or null). The page then shows the sign-in form.
export async function setUpAccount(page, link, password, label, { axeCheck = false, origin = base() } = {}) {
  const url = link.startsWith('http') ? link : `${origin}${link}`;
  await visit(page, url, `${label} set-up`);
  if (axeCheck) await axe(page, 'set-up page');
  let auth = null;
  if (await page.$('#totp-secret')) {
    const key = await text(page, '#totp-secret');
    check(/^[A-Z2-7]{16,}=*$/.test(key), 'the set-up page shows a base32 TOTP key', key);
    check((await page.$('#totp-qr svg')) !== null, 'the set-up page shows the TOTP QR code');
    auth = new Authenticator(key);
  }
  await page.fill('#password', password);
  await page.fill('#password2', password);
  if (auth) await page.fill('#totp', await auth.code());
  await submit(page, 'button[type=submit]', `${label} set-up done`);
  const notice = await page.textContent('main');
  check(notice.includes('Your account is set up. Sign in.'), `${label}: set-up succeeded`, notice);
  return auth;
}

/// Signs in at /console/login; `expect` is the status of the answer: 200
/// (the home page after the redirect) or a refusal (401, 429).
export async function signIn(page, name, password, totp, label, expect = 200, origin = base()) {
  await visit(page, `${origin}/console/login`, `${label} sign-in form`);
  await page.fill('#name', name);
  await page.fill('#password', password);
  if (totp !== undefined && totp !== null) await page.fill('#totp', totp);
  const r = await submit(page, 'button[type=submit]', `${label} signed in (${expect})`, expect);
  if (expect === 200) {
    check(new URL(page.url()).pathname === '/console', `${label}: sign-in leads to /console`, page.url());
    const who = await page.textContent('form.signout');
    check(who.includes(name), `${label}: the header names ${name}`, who);
  }
  return r;
}

/// `linkbook-server --data RELAY_DATA admin add ...`: the set-up link.
export function adminAdd(name, role, relayData = env('RELAY_DATA')) {
  const out = execFileSync(env('LINKBOOK_SERVER_BIN'), ['--data', relayData, 'admin', 'add', '--name', name, '--role', role], {
    encoding: 'utf8',
    timeout: 30_000,
    stdio: ['ignore', 'pipe', 'pipe'],
  }).trim();
  check(/^\/console\/setup\/[0-9a-f]{64}$/.test(out), `admin add prints the set-up link alone`, out);
  return out;
}

// ----------------------------------------------------------------- CLI

/// A CLI device: `linkbook --data DIR ...` (its key file in DIR).
export class Cli {
  constructor(name) {
    this.name = name;
    this.dir = path.join(WORK(), 'devices', safeName(name));
    fs.mkdirSync(path.dirname(this.dir), { recursive: true });
  }

  run(args) {
    const env2 = { ...process.env };
    delete env2.LINKBOOK_KEY;
    delete env2.LINKBOOK_DATA;
    const r = spawnSync(env('LINKBOOK_BIN'), ['--data', this.dir, ...args], {
      encoding: 'utf8',
      timeout: 60_000,
      env: env2,
    });
    if (r.error) throw r.error;
    return { code: r.status, stdout: r.stdout.trim(), stderr: r.stderr.trim() };
  }

  ok(args) {
    const r = this.run(args);
    check(r.code === 0, `${this.name}: linkbook ${args.join(' ')} succeeds`, r);
    return r.stdout;
  }

  json(args) {
    return JSON.parse(this.ok([...args, '--json']));
  }

  enrol(code, deviceName = this.name) {
    return this.ok(['enrol', '--server', base(), '--code', code, '--ca', env('RELAY_CA'), '--device-name', deviceName]);
  }

  sync() {
    return this.ok(['sync']);
  }

  families() {
    return this.json(['family', 'list']);
  }

  deviceId() {
    return this.json(['profile', 'show']).device_id;
  }
}

/// A family id without the `automerge:` prefix.
export const bareId = (id) => String(id).replace(/^automerge:/, '');

/// An enrolment code from the relay's admin command.
export function enrolCodeCli(team, worker) {
  return execFileSync(env('LINKBOOK_SERVER_BIN'), ['--data', env('RELAY_DATA'), 'device', 'enrol', '--team', team, '--worker', worker], {
    encoding: 'utf8',
    timeout: 30_000,
    stdio: ['ignore', 'pipe', 'pipe'],
  }).trim();
}

// ------------------------------------------------------------------- QR

/// Decodes the QR code in a PNG with zbarimg.
export function decodeQr(png) {
  const r = spawnSync('zbarimg', ['--raw', '-q', png], { encoding: 'utf8', timeout: 30_000 });
  check(r.status === 0, `zbarimg decodes ${png}`, r);
  return r.stdout.trim();
}

// ---------------------------------------------------------- leak checks

/// A distinctive note text whose appearance anywhere but the subject-access
/// export is a leak.
export function secretNote(tag) {
  return `NOTE-SECRET-${tag}-${crypto.randomBytes(6).toString('hex')}`;
}

const secrets = new Set();
export function noteSecret(text) {
  secrets.add(text);
  return text;
}

/// No page or download seen so far holds a note's text; the secrets go to
/// WORK_DIR/secrets.json for console.rs's check of the relay's log.
export function checkNoLeaks() {
  const list = [...secrets];
  fs.writeFileSync(path.join(WORK(), 'secrets.json'), JSON.stringify(list));
  check(list.length > 0, 'the scenario wrote secret notes to look for');
  for (const s of list) {
    for (const v of visited) check(!v.html.includes(s), `no note text in the page "${v.label}" (${v.url})`, s);
    for (const d of downloadsText) check(!d.text.includes(s), `no note text in the download "${d.label}"`, s);
  }
  log(`leak check: ${list.length} note texts absent from ${visited.length} pages and ${downloadsText.length} downloads`);
}

/// Parses CSV (the csv crate's quoting: "..." with "" inside).
export function parseCsv(body) {
  const rows = [];
  let row = [];
  let cell = '';
  let quoted = false;
  for (let i = 0; i < body.length; i++) {
    const c = body[i];
    if (quoted) {
      if (c === '"' && body[i + 1] === '"') {
        cell += '"';
        i++;
      } else if (c === '"') quoted = false;
      else cell += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') {
      row.push(cell);
      cell = '';
    } else if (c === '\n') {
      row.push(cell);
      rows.push(row);
      row = [];
      cell = '';
    } else if (c !== '\r') cell += c;
  }
  if (cell !== '' || row.length) {
    row.push(cell);
    rows.push(row);
  }
  return rows;
}

/// Runs `body` as a scenario: prints the checks made, exits 1 on failure.
export async function scenario(name, body) {
  const start = Date.now();
  const hardLimit = Number(process.env.SCENARIO_TIMEOUT_MS ?? 150_000);
  const timer = setTimeout(() => {
    console.error(`SCENARIO ${name}: timed out after ${hardLimit} ms`);
    process.exit(3);
  }, hardLimit);
  const browsers = [];
  try {
    await body(browsers);
    console.log(`SCENARIO ${name}: PASSED (${checks} checks, ${Date.now() - start} ms)`);
    clearTimeout(timer);
    for (const b of browsers) await b.close().catch(() => {});
    process.exit(0);
  } catch (e) {
    console.error(`SCENARIO ${name}: FAILED after ${checks} checks, ${Date.now() - start} ms`);
    console.error(e && e.stack ? e.stack : e);
    for (const b of browsers) await b.close().catch(() => {});
    process.exit(1);
  }
}
