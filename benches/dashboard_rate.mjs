// How many records per second the dashboard takes in, in headless Chromium,
// while the bridge follows simulated LE 6 traffic at RATE lines/s (default
// 10,000, the rate issue 8 names). Run after scripts/e2e.sh has installed
// Chromium and playwright-core:
//
//   cargo build --release
//   NODE_PATH=tests/e2e/node_modules node benches/dashboard_rate.mjs
//
// The channel is left at its default of one record per message; the page
// asks for its own batching (records_per_message=50, the dashboard's
// default) in one run and for one record per message in the other, so the
// two figures compare within one run on the same machine. For each it
// prints the records the page counted per second of simulation and how far
// behind it was when the simulator stopped.
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const require = createRequire(path.join(root, 'tests', 'e2e', 'package.json'));
const { chromium } = require('playwright-core');
const BIN = process.env.BRIDGE_BIN || path.join(root, 'target', 'release', 'calllog-bridge');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const RATE = Number(process.env.RATE || 10000);
const SECONDS = Number(process.env.SECONDS || 10);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(what, f, ms = 30000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

async function one(browser, perMessage) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'calllog-dash-'));
  const logs = path.join(tmp, 'logs');
  const state = path.join(tmp, 'state');
  fs.mkdirSync(logs);
  fs.mkdirSync(state);
  const token = randomBytes(16).toString('hex');
  fs.writeFileSync(path.join(tmp, 'token'), token + '\n');
  const config = path.join(tmp, 'config.toml');
  fs.writeFileSync(config, `state_dir = ${JSON.stringify(state)}
log_level = "warn"
[[source]]
paths = [${JSON.stringify(path.join(logs, '*.log'))}]
format = "le6"
[channel]
listen = "127.0.0.1:0"
token_file = ${JSON.stringify(path.join(tmp, 'token'))}
[status]
listen = "127.0.0.1:0"
`);
  const bridge = spawn(BIN, ['run', '--config', config], { stdio: 'ignore' });
  try {
    const status = await waitFor('status.addr', () => {
      const p = path.join(state, 'status.addr');
      return fs.existsSync(p) && fs.readFileSync(p, 'utf8').trim();
    });
    const page = await browser.newPage({ viewport: { width: 1440, height: 1100 } });
    await page.goto(`http://${status}/#token=${token}&records_per_message=${perMessage}`);
    await waitFor('the page to connect', () => page.evaluate(() => window.__dashboard && window.__dashboard.snapshot().connection === 'open'));
    const t0 = Date.now();
    const sim = spawnSync(BIN, ['simulate', '--format', 'le6', '--dir', logs, '--rate', String(RATE), '--duration', String(SECONDS), '--seed', '5'], { stdio: 'ignore' });
    if (sim.status !== 0) throw new Error('simulate failed');
    const simSecs = (Date.now() - t0) / 1000;
    const lines = fs.readdirSync(logs).filter((f) => f.endsWith('.log')).reduce((n, f) => n + fs.readFileSync(path.join(logs, f), 'utf8').split('\n').filter(Boolean).length, 0);
    const atStop = (await page.evaluate(() => window.__dashboard.snapshot())).calls;
    const done = await waitFor('the page to count every line', async () => {
      const s = await page.evaluate(() => window.__dashboard.snapshot());
      return s.calls >= lines ? Date.now() : null;
    }, 60000).catch(() => null);
    const s = await page.evaluate(() => window.__dashboard.snapshot());
    const head = `page asks records_per_message=${perMessage}: ${lines} records in ${simSecs.toFixed(1)} s of simulation; ` +
      `counted ${atStop} (${(100 * atStop / lines).toFixed(1)} %) when it stopped`;
    const tail = `gaps ${s.gaps}, lost ${s.lost}, repeats ${s.seqRepeats}, reconnects ${s.connects - 1}`;
    if (done) {
      const total = (done - t0) / 1000;
      console.log(`${head}, all ${s.calls} after ${total.toFixed(1)} s = ${Math.round(s.calls / total)} records/s taken in; ${tail}`);
    } else {
      console.log(`${head}; DID NOT KEEP UP: ${s.calls} counted 60 s later; ${tail}`);
    }
    await page.close();
  } finally {
    bridge.kill('SIGTERM');
    await new Promise((r) => bridge.once('exit', r));
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
try {
  console.log(`dashboard intake: simulator at ${RATE} lines/s for ${SECONDS} s; channel at its default of 1 record per message`);
  await one(browser, 50);
  await one(browser, 1);
} finally {
  await browser.close();
}
