// State shared by the views: zones, the selected zone, the household session, and a small event
// bus that fans the live feed out to whichever views are interested.
import { importSeed } from './crypto.js';

const SEED_KEY = 'gridex.seed';
const NAME_KEY = 'gridex.name';
const NONCE_KEY_PREFIX = 'gridex.nonce.';
const ZONE_KEY = 'gridex.zone';

export const state = {
  zones: [],
  zone: localStorage.getItem(ZONE_KEY) || '',
  session: null,
};

const listeners = new Map();

export function on(name, handler) {
  if (!listeners.has(name)) listeners.set(name, new Set());
  listeners.get(name).add(handler);
}

export function emit(name, data) {
  for (const handler of listeners.get(name) ?? []) {
    try {
      handler(data);
    } catch (error) {
      console.error(`handler of ${name} failed`, error);
    }
  }
}

export function zoneInfo() {
  return state.zones.find((zone) => zone.zone_id === state.zone) ?? null;
}

export function slotLenMs() {
  return Number(zoneInfo()?.slot_len_ms) || 900_000;
}

export function setZone(zone) {
  state.zone = zone;
  localStorage.setItem(ZONE_KEY, zone);
  emit('zone', zone);
}

/** Logs in with a seed (hex). The seed is kept in sessionStorage only: gone when the tab closes. */
export async function login(seedHex, name = '') {
  const key = await importSeed(seedHex);
  state.session = { ...key, name };
  sessionStorage.setItem(SEED_KEY, seedHex.trim().toLowerCase());
  sessionStorage.setItem(NAME_KEY, name);
  emit('session', state.session);
  return state.session;
}

export async function restoreSession() {
  const seed = sessionStorage.getItem(SEED_KEY);
  if (!seed) return null;
  try {
    return await login(seed, sessionStorage.getItem(NAME_KEY) || '');
  } catch {
    sessionStorage.removeItem(SEED_KEY);
    return null;
  }
}

export function logout() {
  state.session = null;
  sessionStorage.removeItem(SEED_KEY);
  sessionStorage.removeItem(NAME_KEY);
  emit('session', null);
}

/** The last nonce this browser used for `account` (kept across reloads so nonces keep increasing). */
export function lastNonce(account) {
  return Number(localStorage.getItem(NONCE_KEY_PREFIX + account)) || 0;
}

export function rememberNonce(account, nonce) {
  if (nonce > lastNonce(account)) localStorage.setItem(NONCE_KEY_PREFIX + account, String(nonce));
}
