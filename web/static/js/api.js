// HTTP access to /api/v1: JSON GETs, authenticated trader requests (X-Gridex-* request signature),
// utility requests (Bearer API key), signed order commands, and the live event stream.
import { requestHeaders, signingBytes, verifyBytes } from './crypto.js';

/** The operator key the page pins (`<meta name="gridex-operator-key">`), or null when unset. */
export function pinnedOperatorKey() {
  const content = globalThis.document?.querySelector('meta[name="gridex-operator-key"]')?.content ?? '';
  return /^[0-9a-f]{64}$/.test(content) ? content : null;
}

/** Live events of these names are the exchange's messages, signed by the operator (PROTOCOL.md §2.1). */
const SIGNED_EVENTS = new Set(['book', 'trade', 'order_update']);
/** Live events dropped because they did not verify against the pinned operator key. */
export const liveFeed = { unverified: 0 };

/**
 * The message of a signed live event without `type` and `sig`, or null when it does not verify
 * against the pinned key (then it is counted in `liveFeed.unverified` and never shown).
 */
export async function verifiedEvent(name, data) {
  const pinned = pinnedOperatorKey();
  const { sig, ...fields } = data ?? {};
  const ok = pinned && typeof sig === 'string' && fields.type === name
    && await verifyBytes(pinned, sig, signingBytes(name, fields)).catch(() => false);
  if (!ok) {
    liveFeed.unverified += 1;
    console.warn(`dropped a live ${name} that is not signed by the pinned operator key`);
    return null;
  }
  const { type, ...message } = fields;
  return message;
}

export const API = '/api/v1';
/** A request that takes longer than this is abandoned and reported as failed. */
const REQUEST_TIMEOUT_MS = 15_000;

/** An API error: `code` is the server's `error` field (a protocol reason code for orders). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code || `http_${status}`;
  }
}

/** Pages a list walk follows at most (a list answers `X-Next-Cursor` while more pages follow). */
export const PAGES_MAX = 10;

async function send(path, options = {}) {
  return (await sendPage(path, options)).payload;
}

/** Like `send`, also returning the next page's cursor (`X-Next-Cursor`, null on the last page). */
async function sendPage(path, { method = 'GET', headers = {}, body } = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  let response;
  try {
    response = await fetch(API + path, { method, headers, body, signal: controller.signal, cache: 'no-store' });
  } catch (error) {
    throw new ApiError(0, 'network', error.name === 'AbortError' ? 'the server did not answer in time' : 'the server cannot be reached');
  } finally {
    clearTimeout(timer);
  }
  const type = response.headers.get('content-type') || '';
  const payload = type.includes('json') ? await response.json().catch(() => null) : await response.text();
  if (!response.ok) {
    const code = payload && typeof payload === 'object' ? payload.error : undefined;
    const message = payload && typeof payload === 'object' ? payload.message : String(payload || '').slice(0, 200);
    throw new ApiError(response.status, code, message);
  }
  return { payload, next: response.headers.get('x-next-cursor') };
}

/**
 * Every page of a paged list, following its cursors: at most `pagesMax` pages (then the rows so
 * far, and `truncated` true). `fetchPage(path)` answers `{payload, next}` for one page's path.
 */
async function allPages(path, fetchPage, pagesMax) {
  const rows = [];
  const separator = path.includes('?') ? '&' : '?';
  let pagePath = path;
  for (let page = 0; page < pagesMax; page += 1) {
    const { payload, next } = await fetchPage(pagePath);
    rows.push(...payload);
    if (!next) return { rows, truncated: false };
    pagePath = `${path}${separator}cursor=${encodeURIComponent(next)}`;
  }
  return { rows, truncated: true };
}

/** Every page of a public list (at most `pagesMax`). */
export function getAll(path, pagesMax = PAGES_MAX) {
  return allPages(path, (pagePath) => sendPage(pagePath), pagesMax);
}

/** Every page of a trader's list, each page signed anew (at most `pagesMax`). */
export function traderGetAll(session, path, pagesMax = PAGES_MAX) {
  return allPages(path, (pagePath) => signedPage(session, 'GET', pagePath), pagesMax);
}

/** GET of a public resource. */
export function get(path) {
  return send(path);
}

/** A request authenticated by the household key (never sent: only signatures leave the browser). */
export async function traderRequest(session, method, path, body = '') {
  return (await signedPage(session, method, path, body)).payload;
}

async function signedPage(session, method, path, body = '') {
  const headers = await requestHeaders({
    account: session.account,
    privateKey: session.privateKey,
    method,
    path: API + path,
    body,
  });
  if (body) headers['Content-Type'] = 'application/json';
  return sendPage(path, { method, headers, body: body || undefined });
}

/** Posts a signed order or cancel (canonical JSON with `sig`). */
export function postCommand(session, json) {
  return traderRequest(session, 'POST', '/orders', json);
}

/** A utility request with the API key as a bearer token. */
export function utilityGet(apiKey, path) {
  return send(path, { headers: { Authorization: `Bearer ${apiKey}` } });
}

/**
 * The live feed of one zone. `handlers` maps event names (book, trade, settlement, order_update) to
 * functions of the parsed data; `onState` gets "live" or "reconnecting". The browser's EventSource
 * reconnects by itself. Returns a function that closes the stream.
 */
export function stream(zone, handlers, onState) {
  const source = new EventSource(`${API}/stream?zone=${encodeURIComponent(zone)}`);
  source.onopen = () => onState('live');
  source.onerror = () => onState(source.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting');
  for (const [name, handler] of Object.entries(handlers)) {
    // Verifications finish in order, so the handler sees the events in the order they came.
    let previous = Promise.resolve();
    source.addEventListener(name, (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      if (!SIGNED_EVENTS.has(name)) {
        handler(data);
        return;
      }
      const checked = verifiedEvent(name, data);
      previous = previous.then(() => checked).then((message) => {
        if (message) handler(message);
      });
    });
  }
  return () => source.close();
}
