// Signing, canonical JSON and Merkle proofs of the gridex wire contract, in the browser (and in Node
// for the tests). Mirrors protocol/src/canonical.rs, wire.rs and merkle.rs:
//
// - canonical JSON: RFC 8785 for the restricted value set (objects, arrays, strings, booleans,
//   integers of magnitude <= 2^53 - 1; no floats, no null);
// - signed message: ed25519 over UTF-8 of `gridex/v1/<type>\n` + canonical JSON of the object
//   without `sig`; `sig` = 128 lowercase hex digits; a reading with a home battery (any `battery_*`
//   field) is version 2 and signed under `gridex/v2/reading\n` (PROTOCOL.md §9);
// - request signature (X-Gridex-* headers): the same over `gridex/v1/request\n` + canonical JSON of
//   {account, body_sha256, method, path, ts_ms};
// - Merkle: leaf = SHA-256(0x00 || canonical statement incl. "type":"statement"),
//   node = SHA-256(0x01 || left || right), an odd last node is carried up unchanged.
//
// The secret seed never leaves this module's callers' memory/sessionStorage; nothing here sends it.

const subtle = globalThis.crypto.subtle;
const encoder = new TextEncoder();

/** The DER prefix of a PKCS#8 ed25519 private key; the 32-byte seed follows it. */
const PKCS8_ED25519_PREFIX = hexToBytes('302e020100300506032b657004220420');
/** Largest integer every JSON implementation represents exactly (protocol MAX_SAFE_INTEGER). */
export const MAX_SAFE_INTEGER = 2 ** 53 - 1;
/** Seconds of validity of a request signature on either side of the server's clock (interfaces.md). */
export const REQUEST_WINDOW_MS = 60_000;

export function bytesToHex(bytes) {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let out = '';
  for (const byte of view) out += byte.toString(16).padStart(2, '0');
  return out;
}

export function hexToBytes(hex) {
  if (typeof hex !== 'string' || hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    throw new Error('not an even-length hex string');
  }
  const out = new Uint8Array(hex.length / 2);
  for (let index = 0; index < out.length; index += 1) {
    out[index] = parseInt(hex.slice(index * 2, index * 2 + 2), 16);
  }
  return out;
}

function concat(...parts) {
  const total = parts.reduce((sum, part) => sum + part.length, 0);
  const out = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** Compares two strings by UTF-16 code units, as RFC 8785 sorts object keys. */
function compareUtf16(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * RFC 8785 canonical JSON of a value in the restricted set. Throws on floats, unsafe integers,
 * null/undefined and anything that is not plain data.
 */
export function canonicalJson(value) {
  if (value === null || value === undefined) throw new Error('null is not allowed; omit the field');
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'string':
      return JSON.stringify(value);
    case 'number':
      if (!Number.isInteger(value)) throw new Error(`${value} is not an integer`);
      if (Math.abs(value) > MAX_SAFE_INTEGER) throw new Error(`${value} exceeds 2^53-1`);
      return Object.is(value, -0) ? '0' : String(value);
    case 'object': {
      if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
      const keys = Object.keys(value).sort(compareUtf16);
      const members = keys.map((key) => `${JSON.stringify(key)}:${canonicalJson(value[key])}`);
      return `{${members.join(',')}}`;
    }
    default:
      throw new Error(`a ${typeof value} cannot be encoded`);
  }
}

/** The bytes a signature covers for a message of type `kind` (an object without `sig`). */
/** The fields that make a reading version 2 (PROTOCOL.md §4.1). */
const BATTERY_FIELDS = ['battery_charge_wh', 'battery_discharge_wh', 'battery_soc_permille', 'battery_capacity_wh'];

/** A message's protocol version, from its content: 2 for a reading with a battery, else 1. */
export function messageVersion(kind, object) {
  return kind === 'reading' && BATTERY_FIELDS.some((field) => Object.prototype.hasOwnProperty.call(object, field)) ? 2 : 1;
}

export function signingBytes(kind, object, version = messageVersion(kind, object)) {
  if (Object.prototype.hasOwnProperty.call(object, 'sig')) throw new Error('signing bytes exclude `sig`');
  return encoder.encode(`gridex/v${version}/${kind}\n${canonicalJson(object)}`);
}

export async function sha256(bytes) {
  return new Uint8Array(await subtle.digest('SHA-256', bytes));
}

export async function sha256Hex(bytes) {
  return bytesToHex(await sha256(bytes));
}

/**
 * A household key from its 32-byte ed25519 seed (64 hex digits): `{ account, privateKey }` where
 * `account` is the public key hex (the protocol AccountId).
 */
export async function importSeed(seedHex) {
  const seed = hexToBytes(String(seedHex).trim().toLowerCase());
  if (seed.length !== 32) throw new Error('a secret key is 64 hex digits (a 32-byte ed25519 seed)');
  const der = concat(PKCS8_ED25519_PREFIX, seed);
  // Extractable only so that the public half can be read back as a JWK; the seed is not re-exported.
  const privateKey = await subtle.importKey('pkcs8', der, { name: 'Ed25519' }, true, ['sign']);
  const jwk = await subtle.exportKey('jwk', privateKey);
  const account = bytesToHex(base64UrlToBytes(jwk.x));
  return { account, privateKey };
}

function base64UrlToBytes(text) {
  const base64 = text.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(text.length / 4) * 4, '=');
  const binary = atob(base64);
  return Uint8Array.from(binary, (ch) => ch.charCodeAt(0));
}

export async function signBytes(privateKey, bytes) {
  return bytesToHex(await subtle.sign({ name: 'Ed25519' }, privateKey, bytes));
}

/**
 * Verifies an ed25519 signature by PROTOCOL.md §2's strict rule. WebCrypto checks `s < L` and the
 * cofactorless equation, but accepts a small-order `R` and a key with a torsion component; so `A` and
 * `R` are first checked to be canonical points of the prime-order subgroup that are not of small
 * order (`strictPoint`), as the exchange and libsodium's `crypto_core_ed25519_is_valid_point` do.
 */
export async function verifyBytes(publicKeyHex, signatureHex, bytes) {
  const publicKey = hexToBytes(publicKeyHex);
  const signature = hexToBytes(signatureHex);
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  if (!strictPoint(publicKey) || !strictPoint(signature.subarray(0, 32))) return false;
  const key = await subtle.importKey('raw', publicKey, { name: 'Ed25519' }, false, ['verify']);
  return subtle.verify({ name: 'Ed25519' }, key, signature, bytes);
}

// Edwards25519 arithmetic for the point checks only (never for secrets: BigInt is not constant time).
const FIELD_P = 2n ** 255n - 19n;
const GROUP_L = 2n ** 252n + 27742317777372353535851937790883648493n;
const mod = (a) => ((a % FIELD_P) + FIELD_P) % FIELD_P;
function power(base, exponent) {
  let result = 1n;
  let b = mod(base);
  let e = exponent;
  while (e > 0n) {
    if (e & 1n) result = (result * b) % FIELD_P;
    b = (b * b) % FIELD_P;
    e >>= 1n;
  }
  return result;
}
const CURVE_D = mod(-121665n * power(121666n, FIELD_P - 2n));
const SQRT_MINUS_ONE = power(2n, (FIELD_P - 1n) / 4n);

/** The point `bytes` encodes, in extended coordinates, or null if it is not a canonical encoding. */
function decodePoint(bytes) {
  let y = 0n;
  for (let i = 31; i >= 0; i -= 1) y = (y << 8n) | BigInt(i === 31 ? bytes[i] & 0x7f : bytes[i]);
  const sign = bytes[31] >> 7;
  if (y >= FIELD_P) return null;
  const u = mod(y * y - 1n);
  const v = mod(CURVE_D * y * y + 1n);
  let x = mod(u * power(v, 3n) * power(u * power(v, 7n), (FIELD_P - 5n) / 8n));
  const check = mod(v * x * x);
  if (check === mod(-u)) x = mod(x * SQRT_MINUS_ONE);
  else if (check !== u) return null;
  if (x === 0n && sign === 1) return null;
  if (Number(x & 1n) !== sign) x = FIELD_P - x;
  return { x, y, z: 1n, t: mod(x * y) };
}

function addPoints(p, q) {
  const a = mod((p.y - p.x) * (q.y - q.x));
  const b = mod((p.y + p.x) * (q.y + q.x));
  const c = mod(p.t * 2n * CURVE_D * q.t);
  const d = mod(p.z * 2n * q.z);
  const e = b - a;
  const f = d - c;
  const g = d + c;
  const h = b + a;
  return { x: mod(e * f), y: mod(g * h), z: mod(f * g), t: mod(e * h) };
}

function multiply(point, scalar) {
  let result = { x: 0n, y: 1n, z: 1n, t: 0n };
  let addend = point;
  for (let k = scalar; k > 0n; k >>= 1n) {
    if (k & 1n) result = addPoints(result, addend);
    addend = addPoints(addend, addend);
  }
  return result;
}

const isIdentity = (p) => p.x === 0n && p.y === p.z;

/** A canonical encoding of a point in the prime-order subgroup that is not of small order. */
export function strictPoint(bytes) {
  const point = decodePoint(bytes);
  if (point === null) return false;
  return !isIdentity(multiply(point, 8n)) && isIdentity(multiply(point, GROUP_L));
}

/**
 * Signs a wire message. `message` carries its `type`; returns a new object with `sig` added, and
 * `json`, the canonical JSON to send.
 */
export async function signMessage(privateKey, message) {
  if (typeof message.type !== 'string') throw new Error('a message names its `type`');
  const sig = await signBytes(privateKey, signingBytes(message.type, message));
  const signed = { ...message, sig };
  return { signed, json: canonicalJson(signed) };
}

/**
 * Per-account nonces: strictly increasing, at least the wall clock in microseconds (as the gateway's
 * trading agent starts its nonces, then counts up by one per command, far slower): so a command
 * signed here is above every nonce the agent of the same account has used.
 */
export function nextNonce(lastNonce, nowMs = Date.now()) {
  return Math.max(Math.floor(nowMs) * 1000, Math.floor(lastNonce || 0) + 1);
}

/** A protocol `Order` (see protocol/src/messages.rs); integers in protocol units. */
export function buildOrder({ account, zone, slot, side, pricePerKwh, qtyWh, tif = 'gtc', postOnly = false, nonce, tsMs }) {
  return {
    type: 'order',
    account,
    zone,
    slot,
    side,
    price_per_kwh: pricePerKwh,
    qty_wh: qtyWh,
    tif,
    post_only: postOnly,
    nonce,
    ts_ms: tsMs,
  };
}

/** A protocol `Cancel` of the account's open order `orderNonce`. */
export function buildCancel({ account, zone, slot, orderNonce, nonce, tsMs }) {
  return { type: 'cancel', account, zone, slot, order_nonce: orderNonce, nonce, ts_ms: tsMs };
}

/**
 * The X-Gridex-* headers that authenticate a request: an ed25519 signature of the account key over
 * `gridex/v1/request\n` + canonical {account, body_sha256, method, path, ts_ms}. `path` includes the
 * query string, e.g. `/api/v1/me/orders?x=y`.
 */
// The server accepts a signed request once (PROTOCOL.md §8), so two identical requests signed in
// the same millisecond (two panels fetching the same path) must differ: timestamps strictly increase.
let lastRequestTsMs = 0;

export async function requestHeaders({ account, privateKey, method, path, body = '', tsMs = Date.now() }) {
  const bodyBytes = typeof body === 'string' ? encoder.encode(body) : body;
  lastRequestTsMs = Math.max(Math.floor(tsMs), lastRequestTsMs + 1);
  const payload = {
    account,
    body_sha256: await sha256Hex(bodyBytes),
    method: method.toUpperCase(),
    path,
    ts_ms: lastRequestTsMs,
  };
  const signature = await signBytes(privateKey, signingBytes('request', payload));
  return {
    'X-Gridex-Account': account,
    'X-Gridex-Timestamp': String(payload.ts_ms),
    'X-Gridex-Signature': signature,
  };
}

/** Merkle leaf hash of a statement: SHA-256(0x00 || canonical JSON incl. "type":"statement"). */
export async function statementLeafHash(statement) {
  const object = { ...statement, type: 'statement' };
  return sha256(concat(Uint8Array.of(0), encoder.encode(canonicalJson(object))));
}

export async function nodeHash(left, right) {
  return sha256(concat(Uint8Array.of(1), left, right));
}

/** The Merkle root (hex) of already hashed leaves, in order. Zero leaves: SHA-256(""). */
export async function merkleRoot(leaves) {
  if (leaves.length === 0) return sha256Hex(new Uint8Array(0));
  let level = leaves;
  while (level.length > 1) {
    const next = [];
    for (let index = 0; index < level.length; index += 2) {
      next.push(index + 1 < level.length ? await nodeHash(level[index], level[index + 1]) : level[index]);
    }
    level = next;
  }
  return bytesToHex(level[0]);
}

/**
 * Checks that `statement` is included under `rootHex` by `proof`, a list of
 * `{sibling: hex, side: "left"|"right"}` from leaf to root.
 */
export async function verifyInclusion(statement, proof, rootHex) {
  let hash = await statementLeafHash(statement);
  for (const step of proof) {
    const sibling = hexToBytes(step.sibling);
    if (sibling.length !== 32) return false;
    if (step.side === 'left') hash = await nodeHash(sibling, hash);
    else if (step.side === 'right') hash = await nodeHash(hash, sibling);
    else return false;
  }
  return bytesToHex(hash) === String(rootHex).toLowerCase();
}

/** The inclusion proof of leaf `index` (as protocol merkle::proof builds it); for tests and the mock. */
export async function merkleProof(leaves, index) {
  if (index < 0 || index >= leaves.length) throw new Error('leaf index out of range');
  const steps = [];
  let level = leaves;
  let position = index;
  while (level.length > 1) {
    const sibling = position ^ 1;
    if (sibling < level.length) {
      steps.push({ sibling: bytesToHex(level[sibling]), side: sibling < position ? 'left' : 'right' });
    }
    const next = [];
    for (let at = 0; at < level.length; at += 2) {
      next.push(at + 1 < level.length ? await nodeHash(level[at], level[at + 1]) : level[at]);
    }
    level = next;
    position = Math.floor(position / 2);
  }
  return steps;
}
