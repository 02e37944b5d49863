// End-to-end test of the dashboard: the real bridge on simulated Local
// Edition traffic, the page in headless Chromium (Debian's package, driven
// by playwright-core), and the numbers on the page compared with what the
// simulator wrote. Then the bridge is restarted and the page must resume
// from where it was (`since=<last seq + 1>`) with no gap. A second test
// checks that a crafted `#ws=` cannot make the page send the token to
// another host. A third runs a bridge with `[export]` and checks the
// export panel's figures for a slice (the first bridge has no `[export]`:
// no panel).
//
// Run by scripts/e2e.sh. Environment:
//   BRIDGE_BIN  the calllog-bridge binary (default: target/debug/calllog-bridge)
//   CHROMIUM    the browser (default: /usr/bin/chromium)
//   E2E_OUT     where the screenshot and logs go (default: target/e2e)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const BIN = process.env.BRIDGE_BIN || path.join(root, 'target', 'debug', 'calllog-bridge');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const OUT = path.resolve(process.env.E2E_OUT || path.join(root, 'target', 'e2e'));

/** Simulated sync lag (request_time = now - LAG_MS), and how far off the page may be. */
const LAG_MS = 2500;
const LAG_TOLERANCE_MS = 1500;
/** Local Edition writes each simulated line this long after its call (LE 6 log_ingestion). */
const WRITE_DELAY_MS = 1000;
/** Every wait in this test polls with this deadline. */
const WAIT_MS = 30000;
/** The bridge's `host` setting, stamped on every record (a hub shows its edges' names). */
const HOST = 'e2e-edge-7';

// ---------------------------------------------------------------- helpers

async function waitFor(what, f, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await f();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}; last: ${last instanceof Error ? last.stack : JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Runs the binary to completion; rejects on a non-zero exit. */
async function runBin(args, logName) {
  const log = fs.openSync(path.join(OUT, logName), 'w');
  const p = spawn(BIN, args, { stdio: ['ignore', log, log] });
  const [code, signal] = await once(p, 'exit');
  fs.closeSync(log);
  if (code !== 0) {
    throw new Error(`calllog-bridge ${args.join(' ')} exited ${code ?? signal}:\n${fs.readFileSync(path.join(OUT, logName), 'utf8')}`);
  }
}

/** A running `calllog-bridge run`. */
class Bridge {
  constructor(config, stateDir, logName) {
    this.stateDir = stateDir;
    this.logPath = path.join(OUT, logName);
    // Stale address files from a previous run must not be mistaken for this one's.
    for (const f of ['status.addr', 'channel.addr']) fs.rmSync(path.join(stateDir, f), { force: true });
    const log = fs.openSync(this.logPath, 'w');
    this.proc = spawn(BIN, ['run', '--config', config], { stdio: ['ignore', log, log], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' } });
    fs.closeSync(log);
    this.exited = once(this.proc, 'exit');
  }

  /** The address a listener bound (written by the bridge to `<state_dir>/<name>.addr`). */
  async addr(name) {
    return waitFor(`${name}.addr (bridge log: ${this.logPath})`, () => {
      if (this.proc.exitCode != null) throw new Error(`bridge exited ${this.proc.exitCode}:\n${fs.readFileSync(this.logPath, 'utf8')}`);
      const p = path.join(this.stateDir, `${name}.addr`);
      const text = fs.existsSync(p) ? fs.readFileSync(p, 'utf8').trim() : '';
      return /^[\w.:[\]-]+:\d+$/.test(text) ? text : null;
    });
  }

  /** SIGTERM and wait for a clean exit. */
  async stop() {
    if (this.proc.exitCode != null) return this.proc.exitCode;
    this.proc.kill('SIGTERM');
    const [code, signal] = await this.exited;
    assert.equal(code, 0, `bridge exited ${code ?? signal} on SIGTERM; log: ${this.logPath}`);
    return code;
  }

  kill() {
    if (this.proc.exitCode == null && this.proc.signalCode == null) this.proc.kill('SIGKILL');
  }
}

/**
 * Splits an LE 6 enriched access-log line into its tokens: space-separated,
 * `"quoted"` (with `\"` escapes) and `[bracketed]` tokens kept whole.
 */
function le6Tokens(line) {
  const out = [];
  let i = 0;
  while (i < line.length) {
    while (line[i] === ' ') i++;
    if (i >= line.length) break;
    let tok = '';
    if (line[i] === '"') {
      i++;
      while (i < line.length && line[i] !== '"') {
        if (line[i] === '\\' && i + 1 < line.length) i++;
        tok += line[i++];
      }
      i++;
    } else if (line[i] === '[') {
      const end = line.indexOf(']', i);
      tok = line.slice(i + 1, end < 0 ? line.length : end);
      i = end < 0 ? line.length : end + 1;
    } else {
      const end = line.indexOf(' ', i);
      tok = line.slice(i, end < 0 ? line.length : end);
      i = end < 0 ? line.length : end;
    }
    out.push(tok);
  }
  return out;
}

/** Positions in the LE 6 field order (FORMATS.md §3). */
const LE6 = { status: 12, requestId: 15, execTime: 21, responsestr: 67, minTokens: 71 };

/**
 * What the simulator wrote, counted from the files themselves: lines, lines
 * by status class, error lines by source (`(Mashery)` / `(API)` suffix of
 * the response string).
 */
function countWritten(dir) {
  const c = { lines: 0, statusMix: { '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0, other: 0 }, errors: { mashery: 0, api: 0, other: 0 }, files: [] };
  for (const name of fs.readdirSync(dir).sort()) {
    if (!name.endsWith('.log')) continue;
    c.files.push(path.join(dir, name));
    const text = fs.readFileSync(path.join(dir, name), 'utf8');
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      const t = le6Tokens(line);
      assert.ok(t.length >= LE6.minTokens, `a simulated line has ${t.length} tokens, expected ${LE6.minTokens}: ${line}`);
      c.lines++;
      const code = Number(t[LE6.status]);
      const cls = code >= 200 && code < 600 ? Math.floor(code / 100) + 'xx' : 'other';
      c.statusMix[cls]++;
      if (code >= 400) {
        const rs = t[LE6.responsestr].trim();
        c.errors[/\(Mashery\)$/i.test(rs) ? 'mashery' : /\(API\)$/i.test(rs) ? 'api' : 'other']++;
      }
    }
  }
  return c;
}

function simulate(logs, { seed, rate, duration, burst = false }) {
  const args = ['simulate', '--format', 'le6', '--dir', logs, '--rate', String(rate), '--duration', String(duration), '--lag-ms', String(LAG_MS), '--write-delay-ms', String(WRITE_DELAY_MS), '--seed', String(seed)];
  if (burst) args.push('--burst');
  return runBin(args, `simulate-${seed}.log`);
}

function writeConfig(file, { stateDir, logs, tokenFile, channelListen, statusListen }) {
  fs.writeFileSync(file, `# written by tests/e2e/dashboard.test.mjs
state_dir = ${JSON.stringify(stateDir)}
log_level = "info"
host = ${JSON.stringify(HOST)}

[[source]]
paths = [${JSON.stringify(path.join(logs, '*.log'))}]
format = "le6"

[channel]
listen = ${JSON.stringify(channelListen)}
token_file = ${JSON.stringify(tokenFile)}
records_per_message = 20

[status]
listen = ${JSON.stringify(statusListen)}
`);
}

/** The page's aggregates. */
const snap = (page) => page.evaluate(() => window.__dashboard && window.__dashboard.snapshot());
/** A number shown in the DOM (thousands separators removed). */
const domNumber = async (page, id) => Number((await page.textContent('#' + id)).replace(/[^0-9.-]/g, ''));

async function expectPageMatches(page, written, label) {
  const s = await waitFor(`${label}: the page to count ${written.lines} calls`, async () => {
    const s = await snap(page);
    return s && s.calls >= written.lines ? s : null;
  });
  assert.equal(s.calls, written.lines, `${label}: calls counted`);
  assert.deepEqual(s.statusMix, written.statusMix, `${label}: status mix`);
  assert.deepEqual(s.errors, written.errors, `${label}: errors by source`);
  assert.equal(s.gaps, 0, `${label}: sequence gaps`);
  assert.equal(s.lost, 0, `${label}: records the channel no longer had`);
  assert.equal(s.seqRepeats, 0, `${label}: records sent twice by sequence number`);
  assert.equal(s.badFrames, 0, `${label}: unreadable frames`);
  // The DOM shows the same numbers (rendered a few times per second).
  await waitFor(`${label}: the DOM to show ${written.lines} calls`, async () => (await domNumber(page, 'calls-total')) === written.lines);
  for (const k of ['2xx', '4xx', '5xx']) assert.equal(await domNumber(page, 'status-' + k), written.statusMix[k], `${label}: #status-${k}`);
  assert.equal(await domNumber(page, 'errors-mashery'), written.errors.mashery, `${label}: #errors-mashery`);
  assert.equal(await domNumber(page, 'errors-api'), written.errors.api, `${label}: #errors-api`);
  assert.equal(await domNumber(page, 'last-seq'), s.lastSeq, `${label}: #last-seq`);
  return s;
}

// ---------------------------------------------------------------- the test

test('dashboard shows what was simulated and resumes after a bridge restart', { timeout: 170000 }, async (t) => {
  assert.ok(fs.existsSync(BIN), `no bridge binary at ${BIN} (cargo build first)`);
  assert.ok(fs.existsSync(CHROMIUM), `no browser at ${CHROMIUM} (scripts/e2e.sh installs Debian's chromium)`);
  fs.mkdirSync(OUT, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'calllog-e2e-'));
  const logs = path.join(tmp, 'logs');
  const stateDir = path.join(tmp, 'state');
  fs.mkdirSync(logs);
  fs.mkdirSync(stateDir);
  const token = randomBytes(16).toString('hex');
  const tokenFile = path.join(tmp, 'channel.token');
  fs.writeFileSync(tokenFile, token + '\n', { mode: 0o600 });
  const config = path.join(tmp, 'config.toml');
  writeConfig(config, { stateDir, logs, tokenFile, channelListen: '127.0.0.1:0', statusListen: '127.0.0.1:0' });

  let bridge = new Bridge(config, stateDir, 'bridge-1.log');
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
  t.after(async () => {
    bridge.kill();
    await browser.close().catch(() => {});
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const statusAddr = await bridge.addr('status');
  const channelAddr = await bridge.addr('channel');
  const page = await browser.newPage({ viewport: { width: 1440, height: 1100 } });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  // Network errors while the bridge restarts are expected (the browser logs
  // refused connections itself); anything else logged as an error is not.
  const expectedNetworkError = /WebSocket connection to|Failed to load resource|ERR_CONNECTION_REFUSED|ERR_EMPTY_RESPONSE|ERR_CONNECTION_RESET/;
  page.on('console', (m) => { if (m.type() === 'error' && !expectedNetworkError.test(m.text())) pageErrors.push(m.text()); });

  // The page is served by the status listener; the token travels in the fragment only.
  await page.goto(`http://${statusAddr}/#token=${token}`);
  assert.ok(!page.url().includes(token), 'the page removes the token from the address bar');
  await waitFor('the page to connect to the channel', async () => (await snap(page))?.connection === 'open');
  const first = await snap(page);
  assert.match(first.channelUrl, new RegExp(channelAddr.replace(/[.[\]]/g, '\\$&')), 'channel URL derived from /status');
  assert.equal(await page.getAttribute('#conn-state', 'data-state'), 'open');
  // No `[export]`: no export panel, once /status has been read.
  await waitFor('a /status poll', async () => (await snap(page))?.statusState === 'ok');
  assert.equal((await snap(page)).exportSlices, null, 'no export figures without [export]');
  assert.ok(await page.isHidden('#export-panel'), 'no export panel without [export]');

  // Phase 1: live traffic with a known lag.
  await simulate(logs, { seed: 11, rate: 400, duration: 3 });
  let written = countWritten(logs);
  assert.ok(written.lines >= 1000, `simulated ${written.lines} lines`);
  assert.ok(written.statusMix['2xx'] > 0 && written.statusMix['4xx'] + written.statusMix['5xx'] > 0, 'the simulation has successes and errors');
  const s1 = await expectPageMatches(page, written, 'phase 1');

  // Sync delay: per record (sync_delay_ms) and per file from /status.
  assert.ok(Math.abs(s1.syncDelayMs.p50 - LAG_MS) <= LAG_TOLERANCE_MS, `records' sync delay p50 ${s1.syncDelayMs.p50} ms vs --lag-ms ${LAG_MS}`);
  const withDelay = await waitFor('/status sync delay on the page', async () => {
    const s = await snap(page);
    const f = s.files.filter((f) => f.delay.p50 != null);
    return f.length ? f : null;
  });
  for (const f of withDelay) {
    assert.ok(Math.abs(f.delay.p50 - LAG_MS) <= LAG_TOLERANCE_MS, `file ${f.path}: sync delay p50 ${f.delay.p50} ms vs --lag-ms ${LAG_MS}`);
    assert.ok(['caught-up', 'behind', 'idle', 'stalled'].includes(f.state), `file state ${f.state}`);
  }
  const fileRows = await page.$$eval('#files tbody tr', (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
  assert.ok(fileRows.length >= 1 && fileRows.some((r) => /caught-up|behind|idle|stalled/.test(r[2])), `files table: ${JSON.stringify(fileRows)}`);
  // The table shows the p50 in human units ("2.50 s"); it agrees with --lag-ms too.
  const shownP50 = fileRows.map((r) => r[4]).filter((v) => /^[\d.]+ s$/.test(v)).map((v) => parseFloat(v) * 1000);
  assert.ok(shownP50.length && shownP50.every((v) => Math.abs(v - LAG_MS) <= LAG_TOLERANCE_MS), `files table p50: ${JSON.stringify(fileRows)}`);
  // The transfer delay (the sync's share) is at most the lag minus Local Edition's write delay.
  for (const f of withDelay) {
    assert.ok(f.delay.transferP95 != null && f.delay.transferP95 <= LAG_MS - WRITE_DELAY_MS + 250, `file ${f.path}: transfer p95 ${f.delay.transferP95} ms`);
  }
  assert.ok(fileRows.some((r) => /^[\d.]+ (s|ms)$/.test(r[7])), `files table transfer p95: ${JSON.stringify(fileRows)}`);
  // Chart axes have round ticks: evenly spaced from 0, a round step (a
  // clock's for the sync delay: ms, s, min, h; 1, 2 or 5 x 10^k calls).
  const ticks = await waitFor('both charts drawn', async () => {
    const s = await snap(page);
    return s.ticks.rate.length > 1 && s.ticks.sync.length > 1 ? s.ticks : null;
  });
  const roundDurations = [1, 2, 5, 10, 20, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 15000, 30000, 60000, 120000, 300000, 600000, 900000, 1800000, 3600000];
  const evenlyFromZero = (v) => v[0] === 0 && v.every((x, i) => x === i * v[1]);
  assert.ok(evenlyFromZero(ticks.sync) && roundDurations.includes(ticks.sync[1]) && ticks.sync.length <= 6, `sync-delay axis ticks ${JSON.stringify(ticks.sync)}`);
  assert.ok(ticks.syncLabels.every((l) => /^(0|\d+(\.\d)? (ms|s|min|h))$/.test(l)), `sync-delay axis labels ${JSON.stringify(ticks.syncLabels)}`);
  assert.ok(evenlyFromZero(ticks.rate) && /^[125]0*$/.test(String(ticks.rate[1])) && ticks.rate.length <= 6, `rate axis ticks ${JSON.stringify(ticks.rate)}`);
  // Bounded memory: the live tail keeps a fixed number of records, whatever was received.
  assert.ok(s1.calls > 1000 && s1.tailKept === 1000, `tail kept ${s1.tailKept} of ${s1.calls} records`);

  // The tail filter narrows the live tail to matching records.
  await page.fill('#tail-filter', 'status=5xx');
  const tailStatuses = await waitFor('the filtered tail', async () => {
    const st = await page.$$eval('#tail tbody tr', (trs) => trs.map((tr) => tr.cells[2].textContent));
    return st.length && st.every((c) => c.startsWith('5')) ? st : null;
  });
  assert.ok(tailStatuses.length > 0);
  await page.fill('#tail-filter', '');

  // The live tail has a host column (on a hub: the edge each record came
  // from), and the filter box says it takes `host=`.
  const headers = await page.$$eval('#tail thead th', (ths) => ths.map((th) => th.textContent));
  assert.equal(headers[5], 'host', `tail columns ${JSON.stringify(headers)}`);
  assert.match(await page.getAttribute('#tail-filter', 'placeholder'), /host=/);
  const hosts = await waitFor('the tail rows', async () => {
    const h = await page.$$eval('#tail tbody tr', (trs) => trs.map((tr) => tr.cells[5].textContent));
    return h.length ? h : null;
  });
  assert.ok(hosts.every((h) => h === HOST), `host cells ${JSON.stringify(hosts.slice(0, 5))}`);
  await page.fill('#tail-filter', `host=${HOST}`);
  await waitFor('host= keeps the records of that host', async () => (await page.$$eval('#tail tbody tr', (trs) => trs.length)) > 0);
  await page.fill('#tail-filter', 'host=some-other-edge');
  await waitFor('host= leaves out the other hosts', async () => (await page.$$eval('#tail tbody tr', (trs) => trs.length)) === 0);
  await page.fill('#tail-filter', '');

  // No column of the live tail is cut, at 1400 px or narrower: the table
  // fits its panel and the right-most cells show their whole value.
  for (const width of [1400, 1100]) {
    await page.setViewportSize({ width, height: 1100 });
    const fit = await waitFor(`the tail laid out at ${width} px`, () => page.evaluate(() => {
      const table = document.querySelector('#tail');
      const box = table.parentElement.getBoundingClientRect();
      const last = table.querySelector('thead th:last-child').getBoundingClientRect();
      const lastCells = [...table.querySelectorAll('tbody td:last-child')];
      return lastCells.length ? {
        overflow: table.parentElement.scrollWidth - table.parentElement.clientWidth,
        lastRight: last.right,
        boxRight: box.right,
        cutCells: lastCells.filter((td) => td.scrollWidth > td.clientWidth).length,
      } : null;
    }));
    assert.ok(fit.overflow <= 0 && fit.lastRight <= fit.boxRight + 0.5 && fit.cutCells === 0, `live tail at ${width} px: ${JSON.stringify(fit)}`);
  }
  await page.setViewportSize({ width: 1440, height: 1100 });

  // A second tab without the token: the form asks for it; a wrong token is
  // refused (the form comes back), the right one connects.
  const page2 = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  await page2.goto(`http://${statusAddr}/`);
  await waitFor('the token form', async () => (await snap(page2))?.connection === 'no-token' && page2.isVisible('#token-input'));
  await page2.fill('#token-input', 'not-the-token');
  await page2.press('#token-input', 'Enter');
  // The page says why: the channel refused the token (401), not "down".
  const refused = await waitFor('the wrong token to be refused', async () => {
    const s = await snap(page2);
    return s.connection === 'wrong-token' && s.connects === 0 && (await page2.isVisible('#token-input')) ? s : null;
  });
  assert.match(refused.connectionText, /wrong token/, `the page says the token is wrong: ${refused.connectionText}`);
  await page2.fill('#token-input', token);
  await page2.press('#token-input', 'Enter');
  await waitFor('the right token to connect', async () => (await snap(page2)).connection === 'open');
  await page2.close();

  // Phase 2: restart. Traffic written while the bridge is down must arrive
  // after it comes back, and the page must resume at last seq + 1.
  await bridge.stop();
  // The page tells a bridge that does not answer from a refused token.
  const gone = await waitFor('the page to notice the bridge is gone', async () => {
    const s = await snap(page);
    return s.connection === 'unreachable' ? s : null;
  });
  assert.match(gone.connectionText, /bridge unreachable/, `the page says the bridge is unreachable: ${gone.connectionText}`);
  await simulate(logs, { seed: 12, rate: 300, duration: 1, burst: true });
  // Same ports as before: the page keeps its address.
  writeConfig(config, { stateDir, logs, tokenFile, channelListen: channelAddr, statusListen: statusAddr });
  bridge = new Bridge(config, stateDir, 'bridge-2.log');
  assert.equal(await bridge.addr('status'), statusAddr);
  await waitFor('the page to reconnect', async () => {
    const s = await snap(page);
    return s.connection === 'open' && s.connects >= 2;
  });
  await simulate(logs, { seed: 13, rate: 400, duration: 2 });
  written = countWritten(logs);
  const s2 = await expectPageMatches(page, written, 'after restart');
  assert.ok(s2.lastSeq > s1.lastSeq, 'sequence numbers continue across the restart');
  assert.deepEqual(pageErrors, [], 'no errors in the page');

  const shot = path.join(OUT, 'dashboard.png');
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`# screenshot: ${shot}`);
  console.log(`# calls ${s2.calls}, last seq ${s2.lastSeq}, duplicates dropped ${s2.duplicates}, connects ${s2.connects}`);
});

test('a #ws= naming another host is not followed and the token is not sent there', { timeout: 60000 }, async (t) => {
  fs.mkdirSync(OUT, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'calllog-e2e-ws-'));
  const logs = path.join(tmp, 'logs');
  const stateDir = path.join(tmp, 'state');
  fs.mkdirSync(logs);
  fs.mkdirSync(stateDir);
  const token = randomBytes(16).toString('hex');
  const tokenFile = path.join(tmp, 'channel.token');
  fs.writeFileSync(tokenFile, token + '\n', { mode: 0o600 });
  const config = path.join(tmp, 'config.toml');
  writeConfig(config, { stateDir, logs, tokenFile, channelListen: '127.0.0.1:0', statusListen: '127.0.0.1:0' });

  // "elsewhere": a listener on another port that records every byte it gets.
  const trapped = [];
  const trap = net.createServer((sock) => {
    trapped.push('');
    sock.on('data', (d) => { trapped[trapped.length - 1] += d.toString('latin1'); });
    sock.on('error', () => {});
  });
  await new Promise((r) => trap.listen(0, '127.0.0.1', r));
  const elsewhere = `ws://127.0.0.1:${trap.address().port}/stream`;

  const bridge = new Bridge(config, stateDir, 'bridge-ws.log');
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-dev-shm-usage'] });
  t.after(async () => {
    bridge.kill();
    await browser.close().catch(() => {});
    trap.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  const statusAddr = await bridge.addr('status');
  const channelAddr = await bridge.addr('channel');

  // The crafted link: the page refuses it, for good, without connecting.
  const page = await browser.newPage();
  let statusPolls = 0;
  page.on('request', (r) => { if (new URL(r.url()).pathname === '/status') statusPolls++; });
  const response = await page.goto(`http://${statusAddr}/#token=${token}&ws=${encodeURIComponent(elsewhere)}`);
  const csp = response.headers()['content-security-policy'];
  const connectSrc = csp.split(';').map((d) => d.trim()).find((d) => d.startsWith('connect-src '));
  assert.equal(connectSrc, `connect-src 'self' ws://${channelAddr}`, 'the policy allows only this bridge\'s channel');
  await waitFor('the page to refuse the #ws= target', async () => (await snap(page))?.connection === 'refused');
  // Two /status polls later it still has not tried (no retry loop).
  const polled = statusPolls;
  await waitFor('two more /status polls', async () => statusPolls >= polled + 2);
  assert.equal((await snap(page)).connection, 'refused');
  assert.match(await page.textContent('#conn-state'), /not this bridge's channel/);
  // Should the page's own check ever be bypassed, the browser blocks the connection (CSP).
  const blocked = await page.evaluate((url) => new Promise((resolve) => {
    document.addEventListener('securitypolicyviolation', (e) => resolve(e.violatedDirective), { once: true });
    try { new WebSocket(url + '?key=probe'); } catch (e) { resolve('threw: ' + e.name); }
  }), elsewhere);
  assert.match(blocked, /connect-src|SecurityError/, 'the policy blocks other WebSocket origins');
  await new Promise((r) => setTimeout(r, 500));
  assert.deepEqual(trapped, [], 'nothing reached the other host, so neither did the token');

  // The same parameter naming this bridge's own channel is followed.
  const page2 = await browser.newPage();
  await page2.goto(`http://${statusAddr}/#token=${token}&ws=${encodeURIComponent(`ws://${channelAddr}/stream`)}`);
  await waitFor('the page to connect to the channel named by #ws=', async () => (await snap(page2))?.connection === 'open');
  assert.deepEqual(trapped, []);
});

/** A Local Edition JSON access-log line (format `le-json`). */
function leJsonLine(uuid, requestTimeMs) {
  return JSON.stringify({
    request_uuid: uuid, request_time: isoSeconds(requestTimeMs), api_key: 'k1', method: 'GET',
    uri: `/v1/items?id=${uuid}`, status: '200', bytes: '113', exec_time: '0.012',
  }) + '\n';
}
/** `2026-11-29T10:00:05Z`: ISO 8601 UTC to the second, as /status names slices. */
const isoSeconds = (ms) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

test('a bridge with [export] shows its slices in the export panel', { timeout: 90000 }, async (t) => {
  fs.mkdirSync(OUT, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'calllog-e2e-export-'));
  const logs = path.join(tmp, 'logs');
  const stateDir = path.join(tmp, 'state');
  fs.mkdirSync(logs);
  fs.mkdirSync(stateDir);
  const config = path.join(tmp, 'config.toml');
  fs.writeFileSync(config, `# written by tests/e2e/dashboard.test.mjs
state_dir = ${JSON.stringify(stateDir)}
log_level = "info"
host = ${JSON.stringify(HOST)}

[[source]]
paths = [${JSON.stringify(path.join(logs, '*.log'))}]
format = "le-json"
rescan_interval_ms = 200

[status]
listen = "127.0.0.1:0"

[export]
dir = ${JSON.stringify(path.join(tmp, 'export'))}
slice_minutes = 1
close_after_secs = 1
fsync_interval_ms = 20
`);
  const bridge = new Bridge(config, stateDir, 'bridge-export.log');
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-dev-shm-usage'] });
  t.after(async () => {
    bridge.kill();
    await browser.close().catch(() => {});
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  const statusAddr = await bridge.addr('status');
  const page = await browser.newPage({ viewport: { width: 1440, height: 1100 } });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  await page.goto(`http://${statusAddr}/`);
  // The panel is there from the first /status, before any record.
  await waitFor('the export panel', async () => page.isVisible('#export-panel'));

  // A slice ten minutes ago (ended long since): 40 records, published
  // close_after_secs after they arrive; then 5 late ones, in a late file.
  const start = Math.floor((Date.now() - 10 * 60000) / 60000) * 60000;
  const slice = isoSeconds(start);
  const source = path.join(logs, 'access.log');
  const appended = Date.now();
  fs.writeFileSync(source, Array.from({ length: 40 }, (_, i) => leJsonLine(`on-time-${i}`, start + 5000)).join(''));
  const row = (s) => (s?.exportSlices || []).find((x) => x.slice === slice);
  const closed = await waitFor(`slice ${slice} closed with 40 records`, async () => {
    const x = row(await snap(page));
    return x && x.state === 'closed' && x.records === 40 ? x : null;
  });
  fs.appendFileSync(source, Array.from({ length: 5 }, (_, i) => leJsonLine(`late-${i}`, start + 59000)).join(''));
  const x = await waitFor(`slice ${slice}: 5 late records in 1 late file`, async () => {
    const x = row(await snap(page));
    return x && x.lateRecords === 5 && x.lateFiles === 1 ? x : null;
  });
  const checked = Date.now();
  assert.deepEqual((await snap(page)).exportSlices.map((s) => s.slice), [slice], 'one slice');
  assert.equal(x.records, 40);
  assert.equal(x.uploadsPending, 0, 'no [export.s3]: nothing to upload');
  assert.equal(x.closedAtMs, closed.closedAtMs, 'a late file does not reopen or re-close the slice');
  assert.ok(x.closedAtMs >= Math.floor(appended / 1000) * 1000 && x.closedAtMs <= checked, `closed at ${x.closedAtMs}, records appended at ${appended}`);
  // The oldest record waited at least from its request_time to its append, at most until now.
  assert.ok(x.worstSyncDelayMs >= appended - (start + 5000) - 1000 && x.worstSyncDelayMs <= checked - (start + 5000),
    `worst sync delay ${x.worstSyncDelayMs} ms; the records were appended ${appended - start - 5000} ms after their request_time`);

  // What the page shows is what /status holds, and the DOM row says the same.
  const status = await (await fetch(`http://${statusAddr}/status`)).json();
  const e = status.export;
  assert.equal(e.slice_records[slice], 40, JSON.stringify(e));
  assert.equal(e.slice_late_records[slice], 5, JSON.stringify(e));
  assert.equal(e.slice_late_files[slice], 1, JSON.stringify(e));
  assert.equal(e.slice_open[slice], 0, JSON.stringify(e));
  assert.equal(e.slice_closed_at_seconds[slice] * 1000, x.closedAtMs, JSON.stringify(e));
  assert.equal(e.slice_worst_sync_delay_ms[slice], x.worstSyncDelayMs, JSON.stringify(e));
  const cells = await waitFor('the DOM row', async () => {
    const c = await page.$$eval(`#export-slices tbody tr[data-slice="${slice}"] td`, (tds) => tds.map((td) => td.textContent));
    return c.length === 8 && c[3] === '5' ? c : null;
  });
  assert.deepEqual(cells.slice(0, 5), [slice, 'closed', '40', '5', '1'], `row ${JSON.stringify(cells)}`);
  assert.equal(cells[5], isoSeconds(x.closedAtMs), `closed at ${JSON.stringify(cells)}`);
  assert.match(cells[6], /^\d+(\.\d+)? min$/, `worst sync delay (about ten minutes) ${JSON.stringify(cells)}`);
  assert.ok(Math.abs(parseFloat(cells[6]) * 60000 - x.worstSyncDelayMs) <= 3000, `worst sync delay ${JSON.stringify(cells)} vs ${x.worstSyncDelayMs} ms`);
  assert.equal(cells[7], '0', `uploads pending ${JSON.stringify(cells)}`);
  // The late file is published close_after_secs after its records.
  const totals = await waitFor('both files published', async () => {
    const text = await page.textContent('#export-totals');
    return /2 files published/.test(text) ? text : null;
  });
  assert.match(totals, /^in total: 45 records, 5 late in 1 late files, 2 files published, 0 waiting for upload, 0 upload failures$/);
  assert.deepEqual(pageErrors, [], 'no errors in the page');
  await page.screenshot({ path: path.join(OUT, 'dashboard-export.png'), fullPage: true });
  await bridge.stop();
});
