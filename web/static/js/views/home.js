// Home view for a logged-in household: balances, earnings, energy charts from its meter readings,
// its home battery (state of charge, charge and discharge per slot, what it earned, the plan its
// trading agent signed for the coming slots) when it has one,
// an order form whose orders are signed in the browser, open orders with cancel buttons, and
// settlement statements whose Merkle inclusion proof is checked here.
import { ApiError, get, pinnedOperatorKey, postCommand, traderGetAll, traderRequest } from '../api.js';
import { batteryChart, draw, energyChart } from '../charts.js';
import * as clock from '../clock.js';
import { buildCancel, buildOrder, canonicalJson, nextNonce, signMessage, signingBytes, verifyBytes, verifyInclusion } from '../crypto.js';
import { energy, energyNumber, esc, money, parseDecimal, price, priceNumber, shortId, slotLabel, timeLabel, tokens } from '../format.js';
import { lastNonce, login, logout, on, rememberNonce, slotLenMs, state } from '../state.js';

const STATEMENTS_SHOWN = 24;
/** Slots of meter history in the energy chart. */
const READINGS_HISTORY_SLOTS = 48;
/** Pages of readings the chart reads at most (50,000 readings each: far more than 48 slots hold). */
const READINGS_PAGES_MAX = 4;
/** Upcoming slots of the battery plan listed at most (the plan names up to 96). */
const PLAN_SLOTS_SHOWN = 8;
/** Refused readings listed at most (the newest); the API returns more. */
const REFUSED_SHOWN = 20;
/** Plain words for the reason codes a reading is refused with (PROTOCOL.md §7). */
const REFUSAL_LABELS = {
  timestamp_not_increasing: 'not later than the previous reading',
  timestamp_too_old: 'too old',
  timestamp_in_future: 'time ahead of the exchange',
  counter_went_backwards: 'counter went backwards',
  implausible_energy: 'more energy than the meter can deliver',
  replayed: 'sequence number reused',
  zone_mismatch: 'wrong zone',
};
/** Readings, balances and statements are re-read this often even without events. */
const HOME_REFRESH_MS = 10_000;
/** Settlement and order events come in bursts; the view re-reads at most this often. */
const RELOAD_DEBOUNCE_MS = 500;

let slots = [];
let statements = [];
/** Outcome of each statement's proof check by `zone/slot`, kept across re-renders of the table. */
const proofResults = new Map();
let refreshTimer = null;
let reloadTimer = null;
/** Highest order nonce of this account seen from the server (orders placed by the demo agent too). */
let seenNonce = 0;

const $ = (id) => document.getElementById(id);

export function init() {
  $('login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    await tryLogin($('secret-key').value, '');
  });
  $('logout').addEventListener('click', () => {
    logout();
    render();
  });
  $('order-form').addEventListener('submit', submitOrder);
  for (const id of ['order-price', 'order-qty', 'order-slot']) $(id).addEventListener('input', preview);
  $('order-form').addEventListener('change', preview);
  $('orders-table').addEventListener('click', onOrdersClick);
  $('statements-table').addEventListener('click', onStatementsClick);
  on('order_update', (update) => {
    if (state.session && update.account === state.session.account) scheduleReload(['orders']);
  });
  on('trade', (trade) => {
    const account = state.session?.account;
    if (trade.buyer === account) seenNonce = Math.max(seenNonce, Number(trade.buy_nonce) || 0);
    if (trade.seller === account) seenNonce = Math.max(seenNonce, Number(trade.sell_nonce) || 0);
    if (account && (trade.buyer === account || trade.seller === account)) scheduleReload(['orders']);
  });
  on('settlement', () => scheduleReload(['balances', 'statements', 'readings', 'battery']));
  on('zone', () => slots.splice(0));
}

export function show() {
  render();
}

async function tryLogin(seedHex, name) {
  $('login-error').textContent = '';
  try {
    await login(seedHex, name);
    $('secret-key').value = '';
    render();
  } catch (error) {
    $('login-error').textContent = `That key cannot be used: ${error.message}`;
  }
}

function render() {
  const session = state.session;
  $('login').hidden = Boolean(session);
  $('home').hidden = !session;
  clearInterval(refreshTimer);
  if (!session) {
    loadDemoHouseholds();
    return;
  }
  $('home-name').textContent = session.name || 'Household';
  $('home-account').textContent = shortId(session.account);
  $('home-account').title = session.account;
  refreshTimer = setInterval(() => {
    if (!$('view-home').hidden && state.session) reload(['balances', 'statements', 'readings', 'battery', 'orders', 'slots']);
  }, HOME_REFRESH_MS);
  reload(['balances', 'statements', 'readings', 'battery', 'orders', 'slots']);
}

async function loadDemoHouseholds() {
  let households;
  try {
    households = await get('/demo/households');
  } catch {
    $('demo-households-card').hidden = true;
    return;
  }
  $('demo-households-card').hidden = households.length === 0;
  $('demo-households').innerHTML = households
    .map(
      (home, index) => `<li><button type="button" class="pick" data-index="${index}">
        <strong>${esc(home.name || `Home ${index + 1}`)}</strong><code class="small">${esc(shortId(home.account))}</code></button></li>`,
    )
    .join('');
  for (const button of $('demo-households').querySelectorAll('button')) {
    button.addEventListener('click', () => {
      const home = households[Number(button.dataset.index)];
      tryLogin(home.secret_key_hex, home.name || '');
    });
  }
}

function scheduleReload(parts) {
  scheduleReload.parts = new Set([...(scheduleReload.parts ?? []), ...parts]);
  if (reloadTimer) return;
  reloadTimer = setTimeout(() => {
    reloadTimer = null;
    const pending = [...scheduleReload.parts];
    scheduleReload.parts = new Set();
    if (state.session) reload(pending);
  }, RELOAD_DEBOUNCE_MS);
}

async function reload(parts) {
  const loaders = { balances: loadBalances, statements: loadStatements, readings: loadReadings, battery: loadBattery, orders: loadOrders, slots: loadSlots };
  await Promise.all(parts.map((part) => loaders[part]().catch((error) => showAuthError(error))));
}

function showAuthError(error) {
  if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
    $('order-result').textContent = `The server refused this household's signature: ${error.message}`;
    $('order-result').className = 'small error';
  }
}

async function loadBalances() {
  const balances = await traderRequest(state.session, 'GET', '/me/balances');
  $('balance-money').textContent = money(balances.money);
  $('balance-grid').textContent = tokens(balances.grid);
}

async function loadStatements() {
  statements = await traderRequest(state.session, 'GET', `/me/statements?limit=${STATEMENTS_SHOWN}`);
  statements.sort((a, b) => b.slot - a.slot);
  const net = statements.reduce((sum, s) => sum + Number(s.net), 0);
  const sales = statements.reduce((sum, s) => sum + Number(s.sales), 0);
  const earned = statements.reduce((sum, s) => sum + Number(s.tokens_earned), 0);
  $('earnings').textContent = money(net);
  $('earnings').classList.toggle('negative', net < 0);
  $('earnings-detail').textContent = statements.length
    ? `net over the last ${statements.length} settled slots · sales ${money(sales)} · ${tokens(earned)} earned`
    : 'no settled slots yet';
  $('statements-table').innerHTML = statements.length
    ? statements
        .map(
          (s, index) => `<tr data-slot="${s.slot}">
          <td>${esc(slotLabel(s.slot, true))}${s.no_data ? ' <span class="tag warn" title="a meter had no readings around this slot">no data</span>' : ''}</td>
          <td class="num">${esc(energyNumber(s.bought_wh))}</td><td class="num">${esc(energyNumber(s.sold_wh))}</td>
          <td class="num">${esc(energyNumber(s.imbalance_wh))}</td>
          <td class="num">${esc(money(s.purchases))}</td><td class="num">${esc(money(s.sales))}</td>
          <td class="num">${esc(money(Number(s.grid_fees) + Number(s.protocol_fees)))}</td>
          <td class="num">${esc(money(s.utility_net))}</td>
          <td class="num ${Number(s.net) < 0 ? 'negative' : 'positive'}"><strong>${esc(money(s.net))}</strong></td>
          <td class="num">${esc(tokens(s.tokens_earned).replace(' GRID', ''))}</td>
          <td class="proof"><button type="button" class="small-button" data-verify="${index}">Verify inclusion</button> ${proofCell(s)}</td></tr>`,
        )
        .join('')
    : '<tr><td colspan="11" class="muted">No statements yet: they appear when a slot you traded or metered in is settled.</td></tr>';
}

/**
 * Meter readings are cumulative counters; the chart shows the energy of each interval (a slot):
 * differences of the counters, summed over the household's devices.
 */
export function intervalsFromReadings(readings, intervalMs) {
  const byDevice = new Map();
  for (const reading of readings) {
    const device = reading.device ?? 'meter';
    if (!byDevice.has(device)) byDevice.set(device, []);
    byDevice.get(device).push(reading);
  }
  const bins = new Map();
  for (const list of byDevice.values()) {
    list.sort((a, b) => a.ts_ms - b.ts_ms);
    for (let index = 1; index < list.length; index += 1) {
      const before = list[index - 1];
      const after = list[index];
      const imported = Math.max(0, after.import_wh - before.import_wh);
      const exported = Math.max(0, after.export_wh - before.export_wh);
      const produced = after.pv_wh != null && before.pv_wh != null ? Math.max(0, after.pv_wh - before.pv_wh) : 0;
      const start = Math.floor(after.ts_ms / intervalMs) * intervalMs;
      const bin = bins.get(start) ?? { start_ms: start, import_wh: 0, export_wh: 0, production_wh: 0, consumption_wh: 0 };
      bin.import_wh += imported;
      bin.export_wh += exported;
      bin.production_wh += produced;
      bin.consumption_wh += Math.max(0, produced + imported - exported);
      bins.set(start, bin);
    }
  }
  return [...bins.values()].sort((a, b) => a.start_ms - b.start_ms);
}

async function loadReadings() {
  const to = clock.now() + slotLenMs();
  const from = to - READINGS_HISTORY_SLOTS * slotLenMs();
  const { rows: entries } = await traderGetAll(state.session, `/me/readings?from_ms=${from}&to_ms=${to}`, READINGS_PAGES_MAX);
  const readings = entries.filter((entry) => entry.status !== 'refused');
  showRefused(entries.filter((entry) => entry.status === 'refused'));
  const rows = intervalsFromReadings(readings, slotLenMs());
  draw($('energy-chart'), energyChart, rows);
  const total = (key) => rows.reduce((sum, row) => sum + row[key], 0);
  $('energy-totals').textContent = rows.length
    ? `Over ${rows.length} intervals: produced ${energy(total('production_wh'), 2)}, used ${energy(total('consumption_wh'), 2)}, imported ${energy(total('import_wh'), 2)}, exported ${energy(total('export_wh'), 2)}.`
    : '';
}

/**
 * The household's battery (`/me/battery`: per slot of the same history as the energy chart); the
 * card stays hidden for a home without one.
 */
async function loadBattery() {
  const to = clock.now() + slotLenMs();
  const from = to - READINGS_HISTORY_SLOTS * slotLenMs();
  const battery = await traderRequest(state.session, 'GET', `/me/battery?from_ms=${from}&to_ms=${to}`);
  const has = battery.now != null || battery.slots.length > 0;
  $('battery-card').hidden = !has;
  if (!has) return;
  const now = battery.now;
  $('battery-soc').textContent = now?.soc_permille != null ? `${(now.soc_permille / 10).toFixed(1)} %` : '–';
  $('battery-stored').textContent = now?.stored_wh != null && now?.capacity_wh != null
    ? `${energy(now.stored_wh, 2)} of ${energy(now.capacity_wh, 2)} · ${timeLabel(now.ts_ms)}`
    : '';
  const earned = Number(battery.earned);
  $('battery-earned').textContent = money(earned);
  $('battery-earned').classList.toggle('negative', earned < 0);
  $('battery-earned-detail').textContent = `over ${battery.slots.length} slot${battery.slots.length === 1 ? '' : 's'} · charged ${energy(battery.charge_wh, 2)}, discharged ${energy(battery.discharge_wh, 2)}`;
  draw($('battery-chart'), batteryChart, battery.slots);
  await loadPlan();
}

/**
 * The battery's plan as the household's trading agent last signed it (`/me/plan`, PROTOCOL.md
 * §4.7): for the next slots, the energy it plans to charge (+) or discharge (−) and the state of
 * charge that leaves, and when it was planned. A 404 means its agent has sent none yet.
 */
async function loadPlan() {
  let body = null;
  try {
    body = await traderRequest(state.session, 'GET', '/me/plan');
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) throw error;
  }
  const now = clock.now();
  const slots = (body?.plan?.slots ?? [])
    .filter((entry) => Number(entry.slot) + slotLenMs() > now)
    .slice(0, PLAN_SLOTS_SHOWN);
  $('battery-plan-when').textContent = body
    ? `planned ${timeLabel(body.plan.ts_ms)} by your trading agent`
    : 'no plan from your trading agent yet';
  $('battery-plan-table').innerHTML = slots
    .map((entry) => {
      const wh = Number(entry.charge_wh);
      const label = wh === 0 ? 'idle' : `${wh > 0 ? '+' : '−'}${energy(Math.abs(wh), 2)}`;
      return `<tr data-slot="${esc(entry.slot)}"><td>${esc(slotLabel(entry.slot))}</td><td class="num">${esc(label)}</td><td class="num">${(Number(entry.soc_permille_end) / 10).toFixed(1)} %</td></tr>`;
    })
    .join('');
}

/** Lists the readings the exchange refused (newest first, as the API returns them), with their reason. */
function showRefused(refused) {
  $('refused-readings').hidden = refused.length === 0;
  $('refused-count').textContent = String(refused.length);
  $('refused-table').innerHTML = refused
    .slice(0, REFUSED_SHOWN)
    .map(
      (entry) => `<tr data-seq="${esc(entry.seq)}">
        <td>${esc(timeLabel(entry.received_ms))}</td><td class="num">${esc(entry.seq)}</td>
        <td data-field="reason"><code>${esc(entry.reason)}</code> ${esc(REFUSAL_LABELS[entry.reason] ?? '')}</td>
        <td class="muted">${esc(entry.message)}</td></tr>`,
    )
    .join('');
}

/** Short labels of the time-in-force values, as the order form names them. */
const TIF_LABELS = { gtc: 'GTC', ioc: 'IOC', fok: 'FOK' };

function tifLabel(order) {
  const label = TIF_LABELS[order.tif] ?? '–';
  return order.post_only ? `${label}, post only` : label;
}

async function loadOrders() {
  const orders = await traderRequest(state.session, 'GET', '/me/orders');
  const open = orders.filter((order) => order.status === 'open' || order.status == null);
  for (const order of orders) seenNonce = Math.max(seenNonce, Number(order.order_nonce) || 0);
  open.sort((a, b) => a.slot - b.slot || a.order_nonce - b.order_nonce);
  $('orders-table').innerHTML = open.length
    ? open
        .map(
          (order) => `<tr data-nonce="${order.order_nonce}">
          <td>${esc(slotLabel(order.slot, true))}</td>
          <td data-field="side"><span class="tag ${esc(order.side ?? '')}">${esc(order.side ?? '–')}</span></td>
          <td class="num">${esc(priceNumber(order.price_per_kwh))}</td>
          <td class="num" data-field="open">${esc(energyNumber(order.open_qty_wh))}</td>
          <td class="num" data-field="filled">${esc(energyNumber(order.filled_qty_wh))}</td>
          <td data-field="tif">${esc(tifLabel(order))}</td>
          <td>${esc(order.status ?? 'open')}</td>
          <td><button type="button" class="small-button danger" data-cancel="${order.order_nonce}" data-slot="${order.slot}" data-zone="${esc(order.zone)}">Cancel</button></td></tr>`,
        )
        .join('')
    : '<tr><td colspan="8" class="muted">No open orders</td></tr>';
}

async function loadSlots() {
  if (!state.zone) return;
  const fetched = await get(`/zones/${encodeURIComponent(state.zone)}/slots`);
  slots = fetched.filter((slot) => slot.state !== 'closed').sort((a, b) => a.slot - b.slot);
  const select = $('order-slot');
  const previous = select.value;
  select.innerHTML = slots
    .map((slot) => `<option value="${slot.slot}">${esc(slotLabel(slot.slot, true))} · bid ${slot.best_bid != null ? esc(priceNumber(slot.best_bid)) : '–'} / ask ${slot.best_ask != null ? esc(priceNumber(slot.best_ask)) : '–'}</option>`)
    .join('');
  if (slots.some((slot) => String(slot.slot) === previous)) select.value = previous;
  preview();
}

function readForm() {
  const side = $('order-form').querySelector('input[name="side"]:checked')?.value ?? 'buy';
  const pricePerKwh = parseDecimal($('order-price').value, 6);
  const qtyWh = parseDecimal($('order-qty').value, 3);
  const slot = Number($('order-slot').value);
  const tif = $('order-tif').value;
  const postOnly = $('order-post-only').checked;
  return { side, pricePerKwh, qtyWh, slot, tif, postOnly };
}

function preview() {
  const form = readForm();
  if (!form.pricePerKwh || !form.qtyWh) {
    $('order-preview').textContent = 'Enter a price and a quantity.';
    return;
  }
  const value = Math.round((form.pricePerKwh * form.qtyWh) / 1000);
  $('order-preview').textContent = `${form.side === 'buy' ? 'Buy' : 'Sell'} ${energy(form.qtyWh)} at ${price(form.pricePerKwh)} = ${money(value)} (before fees).`;
}

function nonceFor(account) {
  const nonce = nextNonce(Math.max(lastNonce(account), seenNonce), Date.now());
  rememberNonce(account, nonce);
  return nonce;
}

/**
 * Signs and posts the command `build(nonce, tsMs)` makes. The demo's trading agent uses the same
 * account key, so another nonce may have overtaken ours: on `replayed` the open orders are re-read
 * (raising the nonce floor) and the command is signed again, once.
 */
async function sendSigned(build) {
  for (let attempt = 0; ; attempt += 1) {
    const message = build(nonceFor(state.session.account), clock.now());
    const { json } = await signMessage(state.session.privateKey, message);
    try {
      return { ack: await postCommand(state.session, json), message };
    } catch (error) {
      if (attempt > 0 || error.code !== 'replayed') throw error;
      await loadOrders().catch(() => {});
      seenNonce = Math.max(seenNonce, (Date.now() + 1_000) * 1000);
    }
  }
}

function showResult(text, ok) {
  const element = $('order-result');
  element.textContent = text;
  element.className = `small ${ok ? 'ok' : 'error'}`;
}

async function submitOrder(event) {
  event.preventDefault();
  const session = state.session;
  const form = readForm();
  if (!session) return;
  if (!form.slot) return showResult('Pick an open slot.', false);
  if (!form.pricePerKwh) return showResult('The price is a positive amount with at most 6 decimals.', false);
  if (!form.qtyWh) return showResult('The quantity is a positive number of kWh with at most 3 decimals.', false);
  if (form.postOnly && form.tif !== 'gtc') return showResult('Post only needs "good till cancelled".', false);
  const button = $('order-submit');
  button.disabled = true;
  try {
    const { ack, message: order } = await sendSigned((nonce, tsMs) =>
      buildOrder({
        account: session.account,
        zone: state.zone,
        slot: form.slot,
        side: form.side,
        pricePerKwh: form.pricePerKwh,
        qtyWh: form.qtyWh,
        tif: form.tif,
        postOnly: form.postOnly,
        nonce,
        tsMs,
      }),
    );
    showResult(orderOutcome(order, ack), true);
    document.body.dataset.lastOrderNonce = String(order.nonce);
    scheduleReload(['orders', 'slots']);
  } catch (error) {
    showResult(`Refused: ${error.code ? `${error.code} — ` : ''}${error.message}`, false);
  } finally {
    button.disabled = false;
  }
}

async function onOrdersClick(event) {
  const button = event.target.closest('[data-cancel]');
  if (!button || !state.session) return;
  button.disabled = true;
  try {
    await sendSigned((nonce, tsMs) =>
      buildCancel({
        account: state.session.account,
        zone: button.dataset.zone || state.zone,
        slot: Number(button.dataset.slot),
        orderNonce: Number(button.dataset.cancel),
        nonce,
        tsMs,
      }),
    );
    showResult(`Cancel of order ${button.dataset.cancel} accepted.`, true);
    scheduleReload(['orders', 'slots']);
  } catch (error) {
    button.disabled = false;
    showResult(`Cancel refused: ${error.code ? `${error.code} — ` : ''}${error.message}`, false);
  }
}

/**
 * Checks the operator's signature of the slot root when the server returns the signed root
 * (`signed_root`: the protocol `slot_root` message as JSON text) and that it commits to `root`.
 * Null when there is nothing to check.
 */
async function rootSignatureOk(proof) {
  let signedRoot = proof.signed_root ?? proof.slot_root;
  if (!signedRoot) return null;
  if (typeof signedRoot === 'string') signedRoot = JSON.parse(signedRoot);
  const { sig, ...fields } = signedRoot;
  if (fields.type !== 'slot_root' || fields.root !== proof.root) return false;
  // The key is the one pinned in the page, never the one this response names (PROTOCOL.md §2.1).
  const pinned = pinnedOperatorKey();
  if (!pinned || fields.operator !== pinned) return false;
  return verifyBytes(pinned, sig, signingBytes('slot_root', fields));
}



function proofKey(statement) {
  return `${statement.zone}/${statement.slot}`;
}

function proofCell(statement) {
  const result = proofResults.get(proofKey(statement));
  return `<span class="proof-result ${result?.className ?? ''}" title="${esc(result?.title ?? '')}" aria-live="polite">${esc(result?.text ?? '')}</span>`;
}

function setProofResult(element, statement, text, className, title = '') {
  proofResults.set(proofKey(statement), { text, className, title });
  element.textContent = text;
  element.className = `proof-result ${className}`;
  element.title = title;
}

async function onStatementsClick(event) {
  const button = event.target.closest('[data-verify]');
  if (!button || !state.session) return;
  const statement = statements[Number(button.dataset.verify)];
  const result = button.parentElement.querySelector('.proof-result');
  setProofResult(result, statement, 'checking…', '');
  try {
    const proof = await traderRequest(state.session, 'GET', `/me/statements/${encodeURIComponent(statement.zone)}/${statement.slot}`);
    const included = await verifyInclusion(proof.statement ?? statement, proof.proof ?? [], proof.root);
    const sameAsListed = canonicalJson(stripType(proof.statement ?? statement)) === canonicalJson(stripType(statement));
    const signatureOk = await rootSignatureOk(proof).catch(() => false);
    const ok = included && sameAsListed && signatureOk !== false;
    const text = ok
      ? `✓ included in root ${String(proof.root).slice(0, 10)}…${signatureOk ? ' (operator signature checked)' : ''}`
      : '✗ proof does not match the root';
    setProofResult(result, statement, text, ok ? 'ok' : 'error', `root ${proof.root}, ${proof.proof?.length ?? 0} proof steps`);
  } catch (error) {
    setProofResult(result, statement, `✗ ${error.message}`, 'error');
  }
}

/** What became of an accepted order, from the exchange's answer: traded, resting or cancelled. */
function orderOutcome(order, ack) {
  const update = (ack?.updates ?? []).find((u) => u.order_nonce === order.nonce && u.account === order.account);
  if (!update) return `Order ${order.nonce} accepted.`;
  const filled = Number(update.filled_qty_wh ?? 0);
  const open = Number(update.open_qty_wh ?? 0);
  const traded = filled > 0 ? `${energy(filled)} traded` : 'nothing traded yet';
  switch (update.status) {
    case 'filled':
      return `Order ${order.nonce} filled: ${energy(filled)} traded.`;
    case 'open':
      return `Order ${order.nonce} accepted: ${traded}, ${energy(open)} resting in the book.`;
    default:
      return `Order ${order.nonce} accepted: ${traded}; the rest was ${update.status}.`;
  }
}

function stripType(statement) {
  const { type: _type, ...rest } = statement;
  return rest;
}
