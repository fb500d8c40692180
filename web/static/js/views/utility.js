// Utility view: zone totals (self-sufficiency, peer-to-peer vs utility energy, household savings),
// token supply and emission, the zone's home batteries (storage) and per-slot settlement reports,
// the last two read with the utility's API key.
import { get, utilityGet, API } from '../api.js';
import { batteryChart, draw, splitBar } from '../charts.js';
import * as clock from '../clock.js';
import { energy, esc, money, percentBps, slotLabel, tokens } from '../format.js';
import { on, slotLenMs, state } from '../state.js';

const API_KEY_KEY = 'gridex.apiKey';
/** Settled slots offered in the report picker. */
const REPORT_SLOTS = 48;
/** Slots of the zone's battery charge and discharge shown (the API allows up to 96). */
const STORAGE_SLOTS = 48;

const $ = (id) => document.getElementById(id);
let lastSettled = null;

export function init() {
  $('api-key').value = sessionStorage.getItem(API_KEY_KEY) || '';
  $('report-form').addEventListener('submit', (event) => {
    event.preventDefault();
    loadReport();
    loadStorage();
  });
  $('report-csv').addEventListener('click', downloadCsv);
  on('settlement', (event) => {
    if (event.zone === state.zone && !$('view-utility').hidden) load();
  });
}

export function show() {
  load();
}

async function load() {
  if (!state.zone) return;
  await Promise.all([loadStats(), loadTokens(), loadStorage()]);
  await loadReportSlots();
}

/** The zone's home batteries (`/zones/{zone}/storage`, the utility's key); nothing without a key. */
async function loadStorage() {
  const key = $('api-key').value.trim();
  if (!key || !state.zone) return;
  let storage;
  try {
    storage = await utilityGet(key, `/zones/${encodeURIComponent(state.zone)}/storage?slots=${STORAGE_SLOTS}`);
  } catch (error) {
    $('storage-hint').textContent = `Storage could not be read: ${error.code ?? ''} ${error.message}`;
    return;
  }
  $('storage-hint').textContent = `Home batteries reporting in the last hour, at ${slotLabel(storage.at_ms, true)}.`;
  $('storage-facts').innerHTML = [
    ['Batteries', String(storage.batteries)],
    ['Usable capacity', energy(storage.capacity_wh, 2)],
    ['Stored now', `${energy(storage.stored_wh, 2)}${storage.soc_permille != null ? ` (${(storage.soc_permille / 10).toFixed(1)} %)` : ''}`],
  ]
    .map(([label, value]) => `<dt>${esc(label)}</dt><dd>${esc(value)}</dd>`)
    .join('');
  draw($('storage-chart'), batteryChart, storage.slots);
}

async function loadStats() {
  let stats;
  try {
    stats = await get(`/zones/${encodeURIComponent(state.zone)}/stats`);
  } catch {
    return;
  }
  lastSettled = stats.last_settled_slot ?? null;
  $('stat-self').textContent = percentBps(stats.self_sufficiency_bps);
  $('stat-self-bar').innerHTML = splitBar([
    { value: Number(stats.self_sufficiency_bps), className: 'part-local', label: 'local' },
    { value: 10_000 - Number(stats.self_sufficiency_bps), className: 'part-utility', label: 'from the utility' },
  ]);
  $('stat-savings').textContent = money(stats.household_savings);
  $('stat-slots').textContent = String(stats.settled_slots ?? 0);
  $('stat-last').textContent = lastSettled != null ? `last settled: ${slotLabel(lastSettled, true)}` : 'none settled yet';
  $('stat-energy-bar').innerHTML = splitBar([
    { value: Number(stats.p2p_wh), className: 'part-local', label: 'peer to peer' },
    { value: Number(stats.utility_supplied_wh), className: 'part-utility', label: 'supplied by the utility' },
    { value: Number(stats.utility_absorbed_wh), className: 'part-export', label: 'absorbed by the utility' },
  ]);
  $('stat-energy').innerHTML = [
    ['<span class="swatch part-local"></span>Traded peer to peer', energy(stats.p2p_wh, 2)],
    ['<span class="swatch part-utility"></span>Supplied by the utility', energy(stats.utility_supplied_wh, 2)],
    ['<span class="swatch part-export"></span>Absorbed by the utility (feed-in)', energy(stats.utility_absorbed_wh, 2)],
  ]
    .map(([label, value]) => `<dt>${label}</dt><dd>${esc(value)}</dd>`)
    .join('');
}

async function loadTokens() {
  let supply;
  try {
    supply = await get('/tokens');
  } catch {
    return;
  }
  $('tokens').innerHTML = [
    ['Supply', tokens(supply.supply)],
    ['Maximum supply', tokens(supply.max_supply)],
    ['Epoch', String(supply.epoch)],
    ['Emission per epoch', tokens(supply.emission_per_epoch)],
    ['Next halving at epoch', String(supply.next_halving_epoch)],
  ]
    .map(([label, value]) => `<dt>${esc(label)}</dt><dd>${esc(value)}</dd>`)
    .join('');
  $('tokens-bar').innerHTML = splitBar([
    { value: Number(supply.supply), className: 'part-local', label: 'issued' },
    { value: Number(supply.max_supply) - Number(supply.supply), className: 'part-utility', label: 'not yet issued' },
  ]);
}

async function loadReportSlots() {
  const select = $('report-slot');
  const previous = select.value;
  const step = slotLenMs();
  const newest = lastSettled ?? Math.floor(clock.now() / step) * step - step;
  const options = [];
  for (let index = 0; index < REPORT_SLOTS; index += 1) options.push(newest - index * step);
  select.innerHTML = options.map((slot) => `<option value="${slot}">${esc(slotLabel(slot, true))}</option>`).join('');
  if (options.some((slot) => String(slot) === previous)) select.value = previous;
}

function reportPath(format) {
  return `/reports/${encodeURIComponent(state.zone)}/${$('report-slot').value}?format=${format}`;
}

function apiKey() {
  const key = $('api-key').value.trim();
  sessionStorage.setItem(API_KEY_KEY, key);
  return key;
}

function scalarRows(object) {
  return Object.entries(object)
    .filter(([, value]) => value === null || typeof value !== 'object')
    .map(([key, value]) => `<dt>${esc(columnTitle(key))}</dt><dd>${esc(formatField(key, value))}</dd>`)
    .join('');
}

/** Formats a report field by the unit its name ends with (the house naming rule: unit last). */
function formatField(key, value) {
  if (typeof value !== 'number') return String(value);
  if (key.endsWith('_wh')) return energy(value, 3);
  if (key.endsWith('_per_kwh')) return `${money(value)}/kWh`;
  if (key.endsWith('_bps')) return percentBps(value);
  if (key === 'slot' || key.endsWith('_ms')) return slotLabel(value, true);
  if (key.includes('token')) return tokens(value);
  if (/(purchases|sales|fees|net|money|amount|value|savings|revenue|cost)/.test(key)) return money(value);
  return String(value);
}

/** A column title with its unit as shown: `sold_wh` → "sold (kWh)". */
function columnTitle(key) {
  const unit = key.endsWith('_wh') ? ' (kWh)' : key.endsWith('_per_kwh') ? ' (per kWh)' : '';
  return key.replace(/_(wh|per_kwh|ms)$/, '').replace(/_/g, ' ') + unit;
}

function tableOf(rows) {
  if (!rows.length) return '<p class="muted">No rows.</p>';
  // Columns that hold one value for every row (zone, slot) are already in the report's header.
  const columns = [...new Set(rows.flatMap((row) => Object.keys(row)))]
    .filter((column) => column !== 'type')
    .filter((column) => rows.length < 2 || new Set(rows.map((row) => JSON.stringify(row[column]))).size > 1 || !['zone', 'slot'].includes(column));
  return `<table class="report-table"><thead><tr>${columns.map((c) => `<th class="${typeof rows[0][c] === 'number' ? 'num' : ''}">${esc(columnTitle(c))}</th>`).join('')}</tr></thead><tbody>${rows
    .map((row) => `<tr>${columns.map((c) => `<td class="${typeof row[c] === 'number' ? 'num' : ''}">${esc(c === 'account' ? String(row[c]).slice(0, 12) + '…' : formatField(c, row[c]))}</td>`).join('')}</tr>`)
    .join('')}</tbody></table>`;
}

async function loadReport() {
  $('report-error').textContent = '';
  const key = apiKey();
  if (!key) {
    $('report-error').textContent = 'Paste the utility API key first.';
    return;
  }
  try {
    const report = await utilityGet(key, reportPath('json'));
    const lists = Object.entries(report).filter(([, value]) => Array.isArray(value));
    // Nested objects (e.g. `totals`) are shown as their own fact lists.
    const groups = Object.entries(report).filter(([, value]) => value && typeof value === 'object' && !Array.isArray(value));
    $('report').innerHTML = `<dl class="facts wide">${scalarRows(report)}</dl>${groups
      .map(([name, value]) => `<h3>${esc(name.replace(/_/g, ' '))}</h3><dl class="facts wide">${scalarRows(value)}</dl>`)
      .join('')}${lists
      .map(([name, rows]) => `<h3>${esc(name.replace(/_/g, ' '))}</h3>${tableOf(rows.filter((row) => row && typeof row === 'object'))}`)
      .join('')}`;
  } catch (error) {
    $('report').innerHTML = '';
    $('report-error').textContent = error.status === 404 ? 'That slot has no settlement report (not settled yet?).' : `${error.code}: ${error.message}`;
  }
}

async function downloadCsv() {
  $('report-error').textContent = '';
  const key = apiKey();
  if (!key) {
    $('report-error').textContent = 'Paste the utility API key first.';
    return;
  }
  const response = await fetch(API + reportPath('csv'), { headers: { Authorization: `Bearer ${key}` } });
  if (!response.ok) {
    $('report-error').textContent = `The report could not be downloaded (HTTP ${response.status}).`;
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement('a');
  link.href = url;
  link.download = `gridex-report-${state.zone}-${$('report-slot').value}.csv`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(url), 1_000);
}
