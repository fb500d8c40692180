// The dashboard in headless Chromium against a real `gridex demo`: the order book and a chart update
// live (Server-Sent Events, no reload), a demo household logs in, places an order signed in the
// browser, and sees it in its open orders and in the book; a backdated reading signed with its
// device key is refused and shown with its reason in the household view; a version 2 reading (a
// home battery) signed with that key makes the household's battery card appear, and a battery plan
// signed with its account key shows in that card's plan table. Leaves a
// screenshot in <repo>/target/browser/dashboard.png.
//
// Uses Debian's Chromium (/usr/bin/chromium, or CHROMIUM_PATH); never downloads a browser.
// GRIDEX_BIN names the server binary (default <repo>/target/debug/gridex).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { importSeed, signMessage } from '../../static/js/crypto.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(here, '../../..');
const GRIDEX_BIN = process.env.GRIDEX_BIN || path.join(REPO, 'target/debug/gridex');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const SCREENSHOT_DIR = path.join(REPO, 'target/browser');
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
/** The demo builds a database, a broker and simulated homes before it answers /healthz. */
const STARTUP_TIMEOUT_MS = 90_000;
/** A 15-minute slot passes in about 30 s in the demo (DEMO_SPEED): live changes come well within this. */
const LIVE_TIMEOUT_MS = 60_000;
/** Simulated seconds per real second: a 15-minute slot every 30 s, so an order's slot stays open while the test looks for it. */
const DEMO_SPEED = 30;
const STEP_TIMEOUT_MS = 30_000;
/** Ctrl-C must stop the whole demo (broker, simulators, server) within this. */
const SHUTDOWN_TIMEOUT_MS = 20_000;
const OUTPUT_KEPT_CHARS = 4_000;
/**
 * A battery reading races the home's own gateway (it reads every demo minute, about a second):
 * when the gateway's reading lands between ours being built and sent, ours may be refused; it is
 * built again from the new last reading, at most this often.
 */
const BATTERY_ATTEMPTS = 6;
/** How long one battery reading is given to show up in `/me/battery` before it is sent again. */
const BATTERY_WAIT_MS = 5_000;

const cleanups = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
});

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitForHealth(base, child, output) {
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (child && child.exitCode !== null) throw new Error(`gridex demo exited with ${child.exitCode} before answering /healthz:\n${output()}`);
    try {
      const response = await fetch(`${base}/healthz`);
      if (response.ok) return;
    } catch {
      // not listening yet
    }
    await sleep(250);
  }
  throw new Error(`gridex demo did not answer ${base}/healthz within ${STARTUP_TIMEOUT_MS / 1000} s:\n${output()}`);
}

/** Starts `gridex demo`; returns {base, output(), stop()}. */
async function startServer() {
  if (!existsSync(GRIDEX_BIN)) {
    throw new Error(`the gridex binary is missing at ${GRIDEX_BIN}: run \`cargo build -p web --bin gridex\` first or set GRIDEX_BIN`);
  }
  const port = await freePort();
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'gridex-browser-'));
  let log = '';
  let mqttPort = null;
  const child = spawn(GRIDEX_BIN, ['demo', '--homes', '4', '--speed', String(DEMO_SPEED), '--port', String(port), '--data-dir', dataDir], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
  });
  const keep = (chunk) => {
    log = (log + chunk.toString()).slice(-OUTPUT_KEPT_CHARS);
    mqttPort ??= Number(/MQTT:\s+mqtt:\/\/127\.0\.0\.1:(\d+)/.exec(log)?.[1]) || null;
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const output = () => log.trim() || '(no output)';
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
    const result = await Promise.race([exited, sleep(SHUTDOWN_TIMEOUT_MS).then(() => null)]);
    rmSync(dataDir, { recursive: true, force: true });
    if (result === null) {
      child.kill('SIGKILL');
      throw new Error(`gridex demo did not stop within ${SHUTDOWN_TIMEOUT_MS / 1000} s of SIGINT:\n${output()}`);
    }
    return result;
  };
  const base = `http://127.0.0.1:${port}`;
  try {
    await waitForHealth(base, child, output);
  } catch (error) {
    await stop().catch(() => {});
    throw error;
  }
  return { base, output, stop, dataDir, mqttPort: () => mqttPort };
}

/** Encodes an MQTT 3.1.1 packet: fixed header byte, remaining length, body. */
function mqttPacket(header, body) {
  const length = [];
  let rest = body.length;
  do {
    let digit = rest % 128;
    rest = Math.floor(rest / 128);
    if (rest > 0) digit |= 128;
    length.push(digit);
  } while (rest > 0);
  return Buffer.concat([Buffer.from([header, ...length]), body]);
}

const mqttString = (text) => {
  const bytes = Buffer.from(text);
  return Buffer.concat([Buffer.from([bytes.length >> 8, bytes.length & 255]), bytes]);
};

/** Publishes one QoS 1 message to the demo's broker, as a gateway would; resolves on PUBACK. */
/**
 * A participant's login at the demo's broker: its id as username and client id, its password
 * derived from the demo's broker secret as gridex derives it (HMAC-SHA256 of the tagged username).
 */
function brokerLogin(dataDir, username) {
  const secret = Buffer.from(readFileSync(path.join(dataDir, 'broker.secret'), 'utf8').trim(), 'hex');
  const password = createHmac('sha256', secret).update('gridex-broker-password\n').update(username).digest('hex');
  return { username, password };
}

/** Publishes `payload` on `topic` (QoS 1) as `login` through the broker on `port`; resolves on PUBACK. */
function mqttPublish(port, login, topic, payload) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    // Clean session, username and password; client id = username (the broker refuses any other).
    const connect = mqttPacket(
      0x10,
      Buffer.concat([mqttString('MQTT'), Buffer.from([4, 0xc2, 0, 30]), mqttString(login.username), mqttString(login.username), mqttString(login.password)]),
    );
    const publish = mqttPacket(0x32, Buffer.concat([mqttString(topic), Buffer.from([0, 1]), Buffer.from(payload)]));
    let received = Buffer.alloc(0);
    let done = false;
    socket.setTimeout(STEP_TIMEOUT_MS, () => socket.destroy(new Error('the broker did not answer')));
    socket.on('connect', () => socket.write(connect));
    socket.on('error', reject);
    socket.on('close', () => {
      if (!done) reject(new Error('the broker closed the connection before acknowledging the publish'));
    });
    socket.on('data', (chunk) => {
      received = Buffer.concat([received, chunk]);
      while (received.length >= 2 && received.length >= 2 + received[1]) {
        const [type, length] = [received[0] >> 4, received[1]];
        const body = received.subarray(2, 2 + length);
        received = received.subarray(2 + length);
        if (type === 2 && body[1] !== 0) return reject(new Error(`the broker refused the connection (${body[1]})`));
        if (type === 2) socket.write(publish);
        if (type === 4) {
          done = true;
          socket.end(Buffer.from([0xe0, 0]));
          return resolve();
        }
      }
    });
  });
}

/** Price ticks the test assumes the exchange accepts: 0.001 per kWh. */
const PRICE_TICK_MICRO = 1_000;

/**
 * A buy price that rests in the book at the top of the bids without crossing the asks: one tick
 * above the best bid when that is still below the best ask; otherwise just under the best ask, or
 * the feed-in tariff when the slot is empty.
 */
function restingBidPrice(slot, tariff) {
  const feedIn = Number(tariff.feed_in_price_per_kwh) || 100_000;
  const bid = slot.best_bid == null ? null : Number(slot.best_bid);
  const ask = slot.best_ask == null ? null : Number(slot.best_ask);
  if (bid != null && (ask == null || bid + PRICE_TICK_MICRO < ask)) return bid + PRICE_TICK_MICRO;
  if (ask != null) return Math.max(PRICE_TICK_MICRO, Math.min(feedIn, ask - PRICE_TICK_MICRO));
  return feedIn;
}

/** Runs one named step; a failure says which step and shows the server's last output. */
async function step(name, server, body) {
  try {
    return await body();
  } catch (error) {
    const detail = error && error.message ? error.message.split('\n').slice(0, 6).join('\n') : String(error);
    throw new Error(`step "${name}" failed: ${detail}\n--- last server output ---\n${server.output()}`);
  }
}

test('the dashboard shows the live market and a household places a signed order', { timeout: 300_000 }, async () => {
  assert.ok(existsSync(CHROMIUM), `Chromium is missing at ${CHROMIUM}: apt-get install -y chromium`);
  const server = await startServer();
  let stopped = false;
  cleanups.push(async () => {
    if (!stopped) await server.stop();
  });
  const userDataDir = mkdtempSync(path.join(os.tmpdir(), 'gridex-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 900 },
  });
  cleanups.push(async () => {
    await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));
  page.on('console', (message) => {
    if (message.type() === 'error') pageErrors.push(message.text());
  });

  await step('open the market view', server, async () => {
    await page.goto(`${server.base}/#/market`);
    await page.waitForSelector('body[data-ready="true"]');
    await page.waitForSelector('#live-status[data-state="live"]');
    await page.waitForFunction(() => document.querySelectorAll('#slot-select option').length > 0, null, { timeout: LIVE_TIMEOUT_MS });
    await page.evaluate(() => {
      window.__loadedOnce = true;
    });
  });

  await step('see the order book with orders', server, async () => {
    await page.waitForFunction(
      () => document.querySelectorAll('#book-bids tr td.bid, #book-asks tr td.ask').length > 0,
      null,
      { timeout: LIVE_TIMEOUT_MS },
    );
  });

  await step('see the closing auctions card (the demo zone has none: it says so)', server, async () => {
    await page.waitForFunction(() => document.querySelectorAll('#auctions-table tr').length > 0);
  });

  await step('see the tariff card with the zone\'s default prices', server, async () => {
    await page.waitForFunction(() => document.querySelectorAll('#tariff-table tr td.num').length >= 3);
    const cells = await page.$$eval('#tariff-table tr:last-child td.num', (tds) => tds.map((td) => td.textContent));
    assert.equal(cells[0], '0.3000', `retail of the demo tariff: ${cells}`);
  });

  await step('see a chart update live, without reloading', server, async () => {
    const before = await page.evaluate(() => ({
      book: Number(document.getElementById('book').dataset.liveUpdates || 0),
      prices: Number(document.getElementById('price-chart').dataset.version || 0),
      trades: document.getElementById('trades-table').textContent,
    }));
    await page.waitForFunction(
      (start) => {
        const book = Number(document.getElementById('book').dataset.liveUpdates || 0);
        const prices = Number(document.getElementById('price-chart').dataset.version || 0);
        const events = Number(document.body.dataset.liveEvents || 0);
        return events > 0 && (book > start.book || (prices > start.prices && document.getElementById('trades-table').textContent !== start.trades));
      },
      before,
      { timeout: LIVE_TIMEOUT_MS, polling: 250 },
    );
    assert.equal(await page.evaluate(() => window.__loadedOnce), true, 'the page reloaded instead of updating live');
  });

  // Give the exchange-clock estimate a few seconds of live events before signing an order.
  await sleep(4_000);
  const slot = await page.$eval('#slot-select', (select) => select.value);

  await step('log in as a demo household', server, async () => {
    await page.click('nav a[data-view="home"]');
    await page.waitForSelector('#demo-households button');
    await page.click('#demo-households button >> nth=0');
    await page.waitForSelector('#home:not([hidden])');
    await page.waitForFunction(() => document.getElementById('home-account').textContent.length > 0);
    await page.waitForFunction(() => document.querySelectorAll('#order-slot option').length > 0);
  });

  const zones = await (await fetch(`${server.base}/api/v1/zones`)).json();
  const zone = await page.$eval('#zone-select', (select) => select.value);
  const tariff = zones.find((z) => z.zone_id === zone)?.tariff ?? {};
  const openSlots = await (await fetch(`${server.base}/api/v1/zones/${zone}/slots`)).json();
  // The open slot whose gate closes last: at the demo's speed the nearest slot can close (and
  // leave the market view's list) between placing the order and looking for it in the book.
  const target = openSlots.filter((s) => s.state !== 'closed').reduce((latest, s) => (latest == null || s.gate_closure_ms > latest.gate_closure_ms ? s : latest), null) ?? openSlots.find((s) => String(s.slot) === slot);
  const priceMicro = restingBidPrice(target, tariff);
  const priceText = (priceMicro / 1_000_000).toFixed(6);
  const orderSlotWanted = String(target.slot);

  const nonce = await step('place a signed order', server, async () => {
    const slots = await page.$$eval('#order-slot option', (options) => options.map((option) => option.value));
    assert.ok(slots.includes(orderSlotWanted), `slot ${orderSlotWanted} is not offered in the order form`);
    await page.selectOption('#order-slot', orderSlotWanted);
    await page.check('input[name="side"][value="buy"]');
    await page.fill('#order-price', priceText);
    await page.fill('#order-qty', '1');
    await page.selectOption('#order-tif', 'gtc');
    await page.check('#order-post-only');
    await page.click('#order-submit');
    await page.waitForSelector('#order-result.ok, #order-result.error');
    const result = await page.$eval('#order-result', (element) => ({ ok: element.classList.contains('ok'), text: element.textContent }));
    assert.ok(result.ok, `the order was refused: ${result.text}`);
    const placed = await page.evaluate(() => document.body.dataset.lastOrderNonce);
    // A post-only bid rests whole: the answer says so, from the exchange's order update.
    assert.equal(result.text, `Order ${placed} accepted: nothing traded yet, 1 kWh resting in the book.`);
    return placed;
  });
  const orderSlot = await page.$eval('#order-slot', (select) => select.value);

  await step('see the order among the open orders', server, async () => {
    const row = `#orders-table tr[data-nonce="${nonce}"]`;
    await page.waitForSelector(row, { timeout: LIVE_TIMEOUT_MS });
    // The row shows the order's terms as placed, from the server (not "-" for unknown).
    const cells = await page.$eval(row, (tr) => Object.fromEntries([...tr.querySelectorAll('[data-field]')].map((td) => [td.dataset.field, td.textContent.trim()])));
    assert.equal(cells.side, 'buy', `the side column shows ${JSON.stringify(cells)}`);
    assert.equal(cells.tif, 'GTC, post only', `the time-in-force column shows ${JSON.stringify(cells)}`);
    assert.equal(Number(cells.open) + Number(cells.filled), 1, `open + filled kWh of a 1 kWh order: ${JSON.stringify(cells)}`);
  });

  await step('see the order in the book', server, async () => {
    await page.screenshot({ path: path.join(mkdirSync(SCREENSHOT_DIR, { recursive: true }) ?? SCREENSHOT_DIR, 'dashboard-home.png'), fullPage: true });
    await page.click('nav a[data-view="market"]');
    await page.waitForFunction((value) => [...document.querySelectorAll('#slot-select option')].some((o) => o.value === value), orderSlot);
    await page.selectOption('#slot-select', orderSlot);
    const shown = Number(priceText).toFixed(4);
    await page.waitForFunction(
      (text) => [...document.querySelectorAll('#book-bids td.bid')].some((cell) => cell.textContent.trim() === text),
      shown,
      { timeout: LIVE_TIMEOUT_MS },
    ).catch((error) => {
      throw new Error(`no bid level at ${shown} in the book of slot ${orderSlot}: ${error.message}`);
    });
  });

  await step('see a refused backdated reading with its reason', server, async () => {
    // Home 01's own device key signs a reading dated before the demo began, once the exchange has
    // accepted readings of it: it is refused (`timestamp_not_increasing`) and listed in the household view.
    await page.click('nav a[data-view="home"]');
    await page.waitForFunction(() => document.getElementById('energy-totals').textContent.length > 0, null, { timeout: LIVE_TIMEOUT_MS });
    const port = server.mqttPort();
    assert.ok(port, 'the demo did not print its MQTT port');
    const device = await importSeed(readFileSync(path.join(server.dataDir, 'keys', 'home-000-device.key'), 'utf8'));
    const { now_ms: nowMs } = await (await fetch(`${server.base}/api/v1/clock`)).json();
    const seq = 2 ** 40;
    const reading = { type: 'reading', device: device.account, zone: 'demo', meter_serial: 'BACKDATED-1', seq, ts_ms: nowMs - 6 * 86_400_000, import_wh: 0, export_wh: 0, power_w: 0 };
    const { json } = await signMessage(device.privateKey, reading);
    await mqttPublish(port, brokerLogin(server.dataDir, device.account), `gridex/v1/demo/readings/${device.account}`, json);
    const row = `#refused-table tr[data-seq="${seq}"]`;
    await page.waitForSelector(row, { state: 'attached', timeout: LIVE_TIMEOUT_MS });
    // The list is folded under its count; a click shows it.
    await page.click('#refused-readings:not([hidden]) summary');
    await page.waitForSelector(row, { state: 'visible' });
    const reason = await page.$eval(`${row} [data-field="reason"]`, (cell) => cell.textContent);
    assert.match(reason, /timestamp_not_increasing/);
  });

  await step('see a settled statement arrive live and check its Merkle proof in the browser', server, async () => {
    // The demo settles a slot about every 15 s; the statements table reloads on the live event.
    await page.click('nav a[data-view="home"]');
    const verify = await page.waitForSelector('#statements-table [data-verify]', { timeout: LIVE_TIMEOUT_MS });
    await verify.click();
    await page.waitForFunction(() => /✓|✗/.test(document.querySelector('#statements-table .proof-result')?.textContent ?? ''));
    const text = await page.$eval('#statements-table .proof-result', (element) => element.textContent);
    assert.match(text, /✓ included/, `the inclusion proof did not check: ${text}`);
  });

  await step('see the battery card of a home whose readings carry a battery', server, async () => {
    // When home 01's own gateway reports no battery, its device signs a version 2 reading
    // (PROTOCOL.md §9: tag gridex/v2/reading, topic gridex/v2/…/readings/…) continuing its grid
    // counters from its last accepted reading (read through the household's own signed API) with a
    // margin, and a few seconds ahead on the market clock so its energy fits the nameplate. Its
    // gateway's later readings are then `replayed` (their seq is lower): this step comes last.
    await page.click('nav a[data-view="home"]');
    const port = server.mqttPort();
    const device = await importSeed(readFileSync(path.join(server.dataDir, 'keys', 'home-000-device.key'), 'utf8'));
    const login = brokerLogin(server.dataDir, device.account);
    const household = () =>
      page.evaluate(async () => {
        const { traderRequest } = await import('/static/js/api.js');
        const { state } = await import('/static/js/state.js');
        const { now_ms: now } = await (await fetch('/api/v1/clock')).json();
        const battery = await traderRequest(state.session, 'GET', '/me/battery');
        const rows = await traderRequest(state.session, 'GET', `/me/readings?from_ms=${now - 600_000}&to_ms=${now + 3_600_000}`);
        const accepted = rows.filter((row) => row.status !== 'refused');
        const last = accepted.reduce((latest, row) => (latest == null || row.ts_ms > latest.ts_ms ? row : latest), null);
        return { now, last, battery: battery.now?.soc_permille != null };
      });
    let known = (await household()).battery;
    const injected = !known;
    for (let attempt = 0; attempt < BATTERY_ATTEMPTS && !known; attempt += 1) {
      const { now, last } = await household();
      assert.ok(last, 'home 01 has accepted readings');
      const reading = {
        type: 'reading',
        device: device.account,
        zone: 'demo',
        meter_serial: 'BATTERY-1',
        seq: 2 ** 41 + attempt,
        ts_ms: Math.max(now, last.ts_ms) + 25_000,
        import_wh: last.import_wh + 60,
        export_wh: last.export_wh + 60,
        power_w: 0,
        battery_charge_wh: 1_200,
        battery_discharge_wh: 900,
        battery_soc_permille: 640,
        battery_capacity_wh: 10_000,
      };
      const { json } = await signMessage(device.privateKey, reading);
      await mqttPublish(port, login, `gridex/v2/demo/readings/${device.account}`, json);
      const deadline = Date.now() + BATTERY_WAIT_MS;
      while (!known && Date.now() < deadline) {
        await sleep(250);
        known = (await household()).battery;
      }
    }
    assert.ok(known, `no battery reading of home 01 was accepted in ${BATTERY_ATTEMPTS} attempts`);
    await page.waitForSelector('#battery-card:not([hidden])', { timeout: LIVE_TIMEOUT_MS });
    await page.waitForSelector('#battery-chart svg');
    // The state of charge: the one sent above, or (a battery the demo simulates, which changes
    // with every reading) a percentage.
    await page.waitForFunction(
      (exact) => {
        const text = document.getElementById('battery-soc').textContent;
        return exact ? text === '64.0 %' : /^\d{1,3}\.\d %$/.test(text);
      },
      injected,
      { timeout: LIVE_TIMEOUT_MS },
    );
    const stored = await page.$eval('#battery-stored', (element) => element.textContent);
    assert.match(stored, injected ? /^6\.4 kWh of 10 kWh/ : / kWh of [\d.]+ kWh/);
  });

  await step('see the battery plan the household signed in the battery card', server, async () => {
    // This demo runs no quoting agents (the ones that publish plans), so home 01's account signs
    // a plan of the next eight slots itself (PROTOCOL.md §4.7: tag gridex/v1/battery_plan, topic
    // gridex/v1/{zone}/plans/{account}); the exchange stores it and the card lists it.
    const account = await importSeed(readFileSync(path.join(server.dataDir, 'keys', 'home-000-account.key'), 'utf8'));
    const { now_ms: nowMs } = await (await fetch(`${server.base}/api/v1/clock`)).json();
    const slotMs = await page.evaluate(async () => (await import('/static/js/state.js')).slotLenMs());
    const next = (Math.floor(nowMs / slotMs) + 1) * slotMs;
    const slots = Array.from({ length: 8 }, (_, index) => ({
      slot: next + index * slotMs,
      charge_wh: index < 4 ? 750 : -500,
      soc_permille_end: index < 4 ? 500 + 75 * (index + 1) : 800 - 50 * (index - 3),
    }));
    const plan = { type: 'battery_plan', account: account.account, zone: 'demo', nonce: Date.now() * 1000, ts_ms: nowMs, slots };
    const { json } = await signMessage(account.privateKey, plan);
    await mqttPublish(server.mqttPort(), brokerLogin(server.dataDir, account.account), `gridex/v1/demo/plans/${account.account}`, json);
    await page.waitForSelector('#battery-plan-table tr', { timeout: LIVE_TIMEOUT_MS });
    const when = await page.$eval('#battery-plan-when', (element) => element.textContent);
    assert.match(when, /^planned \d\d:\d\d:\d\d by your trading agent$/);
    const cells = await page.$$eval('#battery-plan-table tr', (rows) => rows.map((row) => [...row.cells].map((cell) => cell.textContent)));
    assert.ok(cells.some(([, energyCell, soc]) => energyCell.startsWith('+') && /^\d{1,3}\.\d %$/.test(soc)), JSON.stringify(cells));
  });

  await step('take a screenshot', server, async () => {
    mkdirSync(SCREENSHOT_DIR, { recursive: true });
    await page.screenshot({ path: path.join(SCREENSHOT_DIR, 'dashboard.png'), fullPage: true });
  });

  const seriousErrors = pageErrors.filter((text) => !/Failed to load resource|EventSource/.test(text));
  assert.deepEqual(seriousErrors, [], `the page logged errors: ${seriousErrors.join('; ')}`);

  await step('stop the demo with Ctrl-C', server, async () => {
    stopped = true;
    const result = await server.stop();
    if (result) {
      assert.ok(result.code === 0 || result.signal === 'SIGINT', `gridex demo exited with code ${result.code} signal ${result.signal}`);
    }
  });
});
