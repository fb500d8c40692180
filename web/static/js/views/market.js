// Market view: open slots of the zone, the order book and depth chart of one slot, the last trades
// and the price chart across slots, all kept current by the live feed.
import { get } from '../api.js';
import { depthChart, draw, priceChart } from '../charts.js';
import * as clock from '../clock.js';
import { energy, energyNumber, esc, price, priceNumber, shortId, slotLabel, timeLabel } from '../format.js';
import { on, slotLenMs, state, zoneInfo } from '../state.js';

/** Price levels shown per side (the protocol publishes at most 20). */
const BOOK_LEVELS = 12;
const TRADES_SHOWN = 15;
/** Closing auction results shown, newest first. */
const AUCTIONS_SHOWN = 8;
/** Slots of history in the price chart. */
const PRICE_HISTORY_SLOTS = 48;
/** Slots are re-read this often even without events, as gate closures pass. */
const SLOTS_REFRESH_MS = 5_000;
/** Many trades arrive together; the price chart is re-read at most this often. */
const PRICES_DEBOUNCE_MS = 1_000;

let slots = [];
let selectedSlot = null;
let bookSeq = -1;
let trades = [];
let auctions = [];
let visible = false;
let refreshTimer = null;
let pricesTimer = null;

const $ = (id) => document.getElementById(id);

export function init() {
  $('slot-select').addEventListener('change', (event) => {
    selectedSlot = Number(event.target.value);
    loadBook();
  });
  on('book', onBook);
  on('trade', onTrade);
  on('settlement', () => {
    loadSlots();
    schedulePrices();
  });
  on('zone', () => {
    selectedSlot = null;
    trades = [];
    renderTariff();
  });
}

export function show() {
  visible = true;
  clearInterval(refreshTimer);
  refreshTimer = setInterval(() => {
    if (!document.getElementById('view-market').hidden) loadSlots();
  }, SLOTS_REFRESH_MS);
  loadAll();
}

async function loadAll() {
  if (!state.zone) return;
  renderTariff();
  await loadSlots();
  await Promise.all([loadBook(), loadTrades(), loadPrices(), loadAuctions()]);
}

/** The slot to show first: the earliest open slot with orders, else the earliest open slot. */
function defaultSlot() {
  const withOrders = slots.find((slot) => slot.best_bid != null || slot.best_ask != null);
  return (withOrders ?? slots[0])?.slot ?? null;
}

export async function loadSlots() {
  if (!state.zone) return;
  try {
    slots = (await get(`/zones/${encodeURIComponent(state.zone)}/slots`)).filter((slot) => slot.state !== 'closed');
  } catch {
    return;
  }
  slots.sort((a, b) => a.slot - b.slot);
  const previous = selectedSlot;
  if (!slots.some((slot) => slot.slot === selectedSlot)) selectedSlot = defaultSlot();
  renderSlots();
  if (previous !== selectedSlot) loadBook();
}

function renderSlots() {
  const select = $('slot-select');
  select.innerHTML = slots
    .map((slot) => `<option value="${slot.slot}">${esc(slotLabel(slot.slot, true))}</option>`)
    .join('');
  if (selectedSlot != null) select.value = String(selectedSlot);
  $('slots-table').innerHTML = slots.length
    ? slots
        .slice(0, 12)
        .map(
          (slot) => `<tr data-slot="${slot.slot}" class="${slot.slot === selectedSlot ? 'selected' : ''}">
            <td><button type="button" class="link" data-pick="${slot.slot}">${esc(slotLabel(slot.slot))}</button></td>
            <td class="num bid">${slot.best_bid != null ? esc(priceNumber(slot.best_bid)) : '–'}</td>
            <td class="num ask">${slot.best_ask != null ? esc(priceNumber(slot.best_ask)) : '–'}</td>
            <td>${esc(slotLabel(slot.gate_closure_ms))}</td></tr>`,
        )
        .join('')
    : '<tr><td colspan="4" class="muted">No open slots</td></tr>';
  for (const button of $('slots-table').querySelectorAll('[data-pick]')) {
    button.addEventListener('click', () => {
      selectedSlot = Number(button.dataset.pick);
      $('slot-select').value = button.dataset.pick;
      renderSlots();
      loadBook();
    });
  }
  const info = slots.find((slot) => slot.slot === selectedSlot);
  $('slot-info').textContent = info
    ? `Delivery ${slotLabel(info.slot, true)}–${slotLabel(info.slot + slotLenMs())}; gate closes at ${slotLabel(info.gate_closure_ms)}.`
    : '';
}

async function loadBook() {
  if (!state.zone || selectedSlot == null) {
    renderBook({ bids: [], asks: [], seq: -1 });
    return;
  }
  const slot = selectedSlot;
  try {
    const book = await get(`/zones/${encodeURIComponent(state.zone)}/book?slot=${slot}&levels=${BOOK_LEVELS}`);
    if (slot === selectedSlot) {
      bookSeq = -1;
      renderBook(book);
    }
  } catch {
    if (slot === selectedSlot) renderBook({ bids: [], asks: [], seq: -1 });
  }
}

function levelRow(level, side) {
  const cells = [
    `<td>${Number(level.orders)}</td>`,
    `<td class="num">${esc(energyNumber(level.qty_wh))}</td>`,
    `<td class="num ${side}">${esc(priceNumber(level.price_per_kwh))}</td>`,
  ];
  return `<tr>${(side === 'ask' ? cells.reverse() : cells).join('')}</tr>`;
}

function renderBook(book) {
  bookSeq = Number(book.seq ?? -1);
  $('book').dataset.seq = String(bookSeq);
  $('book').dataset.slot = String(book.slot ?? '');
  const bids = (book.bids ?? []).slice(0, BOOK_LEVELS);
  const asks = (book.asks ?? []).slice(0, BOOK_LEVELS);
  $('book-bids').innerHTML = bids.length ? bids.map((l) => levelRow(l, 'bid')).join('') : '<tr><td colspan="3" class="muted">No bids</td></tr>';
  $('book-asks').innerHTML = asks.length ? asks.map((l) => levelRow(l, 'ask')).join('') : '<tr><td colspan="3" class="muted">No asks</td></tr>';
  $('book-phase').hidden = book.call_phase !== true;
  draw($('depth-chart'), depthChart, book);
}

/** The zone's closing auction results (a zone without a closing auction has none). */
async function loadAuctions() {
  if (!state.zone) return;
  try {
    auctions = (await get(`/zones/${encodeURIComponent(state.zone)}/auctions`)).reverse().slice(0, AUCTIONS_SHOWN);
  } catch {
    auctions = [];
  }
  $('auctions-table').innerHTML = auctions.length
    ? auctions
        .map(
          (result) => `<tr><td>${esc(slotLabel(result.slot))}</td>
          <td class="num">${result.price_per_kwh != null ? esc(priceNumber(result.price_per_kwh)) : '–'}</td>
          <td class="num">${esc(energyNumber(result.qty_wh))}</td><td class="num">${Number(result.trades)}</td></tr>`,
        )
        .join('')
    : '<tr><td colspan="4" class="muted">No closing auction in this zone yet</td></tr>';
}

function onBook(book) {
  if (book.zone !== state.zone) return;
  const known = slots.find((slot) => slot.slot === book.slot);
  if (known) {
    known.best_bid = book.bids?.[0]?.price_per_kwh ?? null;
    known.best_ask = book.asks?.[0]?.price_per_kwh ?? null;
    if (book.state === 'closed') {
      loadSlots();
      loadAuctions();
    }
    else if (visible) renderSlots();
  } else if (book.state !== 'closed') {
    loadSlots();
  }
  if (book.slot === selectedSlot && Number(book.seq) > bookSeq) {
    renderBook(book);
    const element = $('book');
    element.dataset.liveUpdates = String(Number(element.dataset.liveUpdates || 0) + 1);
  }
}

function renderTrades() {
  $('trades-table').innerHTML = trades.length
    ? trades
        .map(
          (trade) => `<tr title="${esc(`${energy(trade.qty_wh)} from ${shortId(trade.seller)} to ${shortId(trade.buyer)} at ${price(trade.price_per_kwh)}`)}">
          <td>${esc(timeLabel(trade.ts_ms))}</td><td>${esc(slotLabel(trade.slot))}</td>
          <td class="num ${trade.aggressor === 'buy' ? 'bid' : 'ask'}">${esc(priceNumber(trade.price_per_kwh))}</td>
          <td class="num">${esc(energyNumber(trade.qty_wh))}</td></tr>`,
        )
        .join('')
    : '<tr><td colspan="4" class="muted">No trades yet</td></tr>';
}

async function loadTrades() {
  try {
    trades = (await get(`/zones/${encodeURIComponent(state.zone)}/trades?limit=${TRADES_SHOWN}`)).slice(0, TRADES_SHOWN);
  } catch {
    trades = [];
  }
  renderTrades();
}

function onTrade(trade) {
  if (trade.zone !== state.zone) return;
  if (trades.some((known) => known.trade_id === trade.trade_id)) return;
  trades = [trade, ...trades].sort((a, b) => b.trade_id - a.trade_id).slice(0, TRADES_SHOWN);
  renderTrades();
  schedulePrices();
}

function schedulePrices() {
  if (pricesTimer) return;
  pricesTimer = setTimeout(() => {
    pricesTimer = null;
    loadPrices();
  }, PRICES_DEBOUNCE_MS);
}

async function loadPrices() {
  if (!state.zone) return;
  const now = clock.now();
  const from = now - PRICE_HISTORY_SLOTS * slotLenMs();
  const to = now + PRICE_HISTORY_SLOTS * slotLenMs();
  let rows = [];
  try {
    rows = await get(`/zones/${encodeURIComponent(state.zone)}/prices?from_ms=${from}&to_ms=${to}`);
  } catch {
    return;
  }
  const chart = $('price-chart');
  draw(chart, priceChart, rows);
  chart.dataset.version = String(Number(chart.dataset.version || 0) + 1);
  const traded = rows.filter((row) => Number(row.trades ?? 0) > 0 || Number(row.volume_wh) > 0);
  const volume = traded.reduce((sum, row) => sum + Number(row.volume_wh), 0);
  const last = traded.sort((a, b) => b.slot - a.slot)[0];
  $('price-summary').textContent = last
    ? `last close ${price(last.close)} · ${energy(volume, 1)} traded in ${traded.length} slots`
    : '';
}

const DAY_NAMES = ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'];

/** A days-of-week bitmask (Monday = 1 … Sunday = 64) as text: "Mon–Fri", "Sat, Sun", "Every day". */
export function daysLabel(mask) {
  if (mask === 127) return 'Every day';
  if (mask === 31) return 'Mon–Fri';
  return DAY_NAMES.filter((_, day) => mask & (1 << day)).join(', ');
}

function minuteLabel(minute) {
  return `${String(Math.floor(minute / 60)).padStart(2, '0')}:${String(minute % 60).padStart(2, '0')}`;
}

function offsetLabel(minutes) {
  const sign = minutes < 0 ? '−' : '+';
  return `UTC${sign}${minuteLabel(Math.abs(minutes))}`;
}

/** The zone's tariff in force: its time-of-use bands, then the flat default. */
function renderTariff() {
  const tariff = zoneInfo()?.tariff;
  if (!tariff) {
    $('tariff-info').textContent = '';
    $('tariff-table').innerHTML = '<tr><td colspan="5" class="muted">No tariff</td></tr>';
    return;
  }
  const row = (days, time, prices) => `<tr><td>${esc(days)}</td><td>${esc(time)}</td>
    <td class="num">${esc(priceNumber(prices.retail_price_per_kwh))}</td>
    <td class="num">${esc(priceNumber(prices.feed_in_price_per_kwh))}</td>
    <td class="num">${esc(priceNumber(prices.grid_fee_per_kwh))}</td></tr>`;
  const bands = tariff.bands ?? [];
  $('tariff-info').textContent = bands.length ? `local time ${offsetLabel(tariff.utc_offset_minutes ?? 0)}` : '';
  $('tariff-table').innerHTML =
    bands
      .map((band) =>
        row(daysLabel(band.days), `${minuteLabel(band.start_minute)}–${minuteLabel(band.end_minute)}`, band),
      )
      .join('') + row(bands.length ? 'Other times' : 'Every day', 'all day', tariff);
}
