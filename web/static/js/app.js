// The dashboard: hash routing between the market, home and utility views, the zone picker, and the
// live feed (Server-Sent Events) that keeps every view current without reloading.
import { get, getAll, stream } from './api.js';
import * as clock from './clock.js';
import { CURRENCY } from './format.js';
import { emit, restoreSession, setZone, state } from './state.js';
import * as market from './views/market.js';
import * as home from './views/home.js';
import * as utility from './views/utility.js';

const VIEWS = { market, home, utility };
let current = null;
let closeStream = null;
let liveEvents = 0;

export function banner(text) {
  const element = document.getElementById('banner');
  element.textContent = text || '';
  element.hidden = !text;
}

function route() {
  const name = (location.hash.replace(/^#\/?/, '').split('/')[0] || 'market').toLowerCase();
  const view = VIEWS[name] ? name : 'market';
  for (const section of document.querySelectorAll('.view')) section.hidden = section.dataset.view !== view;
  for (const link of document.querySelectorAll('.tabs a')) {
    if (link.dataset.view === view) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (current !== view) {
    current = view;
    VIEWS[view].show();
  }
}

function setLive(stateName) {
  const element = document.getElementById('live-status');
  element.dataset.state = stateName;
  element.textContent = stateName === 'live' ? 'live' : stateName;
}

function connect(zone) {
  if (closeStream) closeStream();
  setLive('connecting');
  const count = (name) => (data) => {
    liveEvents += 1;
    document.body.dataset.liveEvents = String(liveEvents);
    if (data && data.ts_ms && (name === 'book' || name === 'trade')) clock.observe(data.ts_ms);
    emit(name, data);
  };
  closeStream = stream(
    zone,
    { book: count('book'), trade: count('trade'), settlement: count('settlement'), order_update: count('order_update') },
    setLive,
  );
}

/** The market clock is re-read this often so that the estimate never drifts far. */
const CLOCK_SYNC_MS = 30_000;

async function syncClock() {
  try {
    clock.setFromServer(await get('/clock'));
  } catch {
    // Not served: the clock is estimated from the `ts_ms` of live events instead.
  }
}

async function loadZones() {
  const select = document.getElementById('zone-select');
  try {
    state.zones = (await getAll('/zones')).rows;
  } catch (error) {
    banner(`Cannot load zones: ${error.message}`);
    return;
  }
  if (!state.zones.some((zone) => zone.zone_id === state.zone)) state.zone = state.zones[0]?.zone_id ?? '';
  select.innerHTML = '';
  for (const zone of state.zones) {
    const option = document.createElement('option');
    option.value = zone.zone_id;
    option.textContent = zone.name || zone.zone_id;
    select.append(option);
  }
  select.value = state.zone;
  if (!state.zone) banner('No zones are configured yet.');
}

async function start() {
  for (const element of document.querySelectorAll('.currency')) element.textContent = CURRENCY;
  document.body.dataset.liveEvents = '0';
  await Promise.all([loadZones(), syncClock()]);
  setInterval(syncClock, CLOCK_SYNC_MS);
  for (const view of Object.values(VIEWS)) view.init();
  document.getElementById('zone-select').addEventListener('change', (event) => {
    setZone(event.target.value);
    connect(state.zone);
    VIEWS[current]?.show();
  });
  window.addEventListener('hashchange', route);
  await restoreSession();
  if (state.zone) connect(state.zone);
  route();
  document.body.dataset.ready = 'true';
}

start();
