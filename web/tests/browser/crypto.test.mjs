// Checks web/static/js/crypto.js (the dashboard's signing, canonical JSON and Merkle code) against the
// protocol crate: the valid vectors of protocol/test-vectors.json, and Merkle roots computed by an
// independent implementation (see MERKLE_ROOTS below).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import {
  buildCancel,
  buildOrder,
  bytesToHex,
  canonicalJson,
  importSeed,
  merkleProof,
  merkleRoot,
  nextNonce,
  requestHeaders,
  sha256Hex,
  signMessage,
  signingBytes,
  statementLeafHash,
  verifyBytes,
  verifyInclusion,
} from '../../static/js/crypto.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const VECTORS_PATH = path.resolve(here, '../../../protocol/test-vectors.json');

// Used only when protocol/test-vectors.json is absent: the `order-sell-gtc` vector, i.e.
// protocol::testing::sample_order(&signing_key(3)) signed by that key.
const FALLBACK_VECTORS = [
  {
    name: 'order-sell-gtc (embedded copy)',
    kind: 'order',
    public_key: 'ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1',
    message: {
      account: 'ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1',
      nonce: 7,
      post_only: false,
      price_per_kwh: 180000,
      qty_wh: 1500,
      side: 'sell',
      sig: '63eb2df1bdbf21a2755e1f3e6693083df43aed8cb3a6c02affd1707bd6567a240c7fb3a2cc07f9277070b9166c1a51f962d529cb01c8f649220deb53de94e80f',
      slot: 1790000100000,
      tif: 'gtc',
      ts_ms: 1790000000000,
      type: 'order',
      zone: 'test-zone',
    },
    signing_bytes_hex: null,
    valid: true,
  },
];

const vectors = existsSync(VECTORS_PATH) ? JSON.parse(readFileSync(VECTORS_PATH, 'utf8')) : FALLBACK_VECTORS;
const validVectors = vectors.filter((vector) => vector.valid);
const badSignatureVectors = vectors.filter((vector) => !vector.valid && vector.reason === 'bad_signature');
// Keys the strict rule refuses (PROTOCOL.md §2 step 1), e.g. `mixed-order-key`, whose signature
// satisfies the equation: WebCrypto alone accepts it.
const badKeyVectors = vectors.filter((vector) => !vector.valid && vector.reason === 'invalid_public_key');

function withoutSig(message) {
  const { sig, ...rest } = message;
  return { rest, sig };
}

/** protocol::testing::signing_key(n) is 32 bytes of n; find n for a vector's public key. */
async function seedFor(publicKeyHex) {
  for (let n = 1; n < 256; n += 1) {
    const seedHex = n.toString(16).padStart(2, '0').repeat(32);
    const { account } = await importSeed(seedHex);
    if (account === publicKeyHex) return seedHex;
  }
  return null;
}

test('the vectors file is there and has valid vectors', () => {
  assert.ok(validVectors.length > 0, `no valid vectors in ${VECTORS_PATH}`);
  if (!existsSync(VECTORS_PATH)) console.log(`# ${VECTORS_PATH} is absent: using an embedded vector`);
});

test('signing bytes equal the protocol vectors byte for byte', () => {
  for (const vector of validVectors.filter((v) => v.signing_bytes_hex)) {
    const { rest } = withoutSig(vector.message);
    assert.equal(bytesToHex(signingBytes(vector.kind, rest)), vector.signing_bytes_hex, vector.name);
  }
});

test('every valid vector signature verifies under its public key', async () => {
  for (const vector of validVectors) {
    const { rest, sig } = withoutSig(vector.message);
    assert.ok(await verifyBytes(vector.public_key, sig, signingBytes(vector.kind, rest)), vector.name);
  }
});

test('signing a vector message with its seed reproduces the vector signature', async () => {
  let signed = 0;
  for (const vector of validVectors) {
    const seedHex = await seedFor(vector.public_key);
    if (!seedHex) continue;
    const { privateKey, account } = await importSeed(seedHex);
    assert.equal(account, vector.public_key);
    const { rest } = withoutSig(vector.message);
    const { signed: message, json } = await signMessage(privateKey, rest);
    assert.equal(message.sig, vector.message.sig, vector.name);
    assert.equal(json, canonicalJson(vector.message), vector.name);
    signed += 1;
  }
  assert.ok(signed > 0, 'no vector was made with a seed of the form [n; 32]');
});

test('a reading with a battery signs under the version 2 tag, as the protocol vector says', async () => {
  const vector = validVectors.find((v) => v.name === 'reading-v2-battery');
  if (!vector) return; // the embedded fallback has no reading
  assert.equal(vector.version, 2);
  const { rest } = withoutSig(vector.message);
  assert.match(new TextDecoder().decode(signingBytes('reading', rest)), /^gridex\/v2\/reading\n/);
  const { battery_charge_wh: _c, battery_discharge_wh: _d, battery_soc_permille: _s, battery_capacity_wh: _k, ...plain } = rest;
  assert.match(new TextDecoder().decode(signingBytes('reading', plain)), /^gridex\/v1\/reading\n/);
});

test('an order built by the order form signs to the sample order vector', async () => {
  const vector = validVectors.find((v) => v.kind === 'order' && v.message.side === 'sell');
  assert.ok(vector, 'a sell order vector exists');
  const seedHex = await seedFor(vector.public_key);
  const { privateKey, account } = await importSeed(seedHex);
  const m = vector.message;
  const order = buildOrder({
    account,
    zone: m.zone,
    slot: m.slot,
    side: m.side,
    pricePerKwh: m.price_per_kwh,
    qtyWh: m.qty_wh,
    tif: m.tif,
    postOnly: m.post_only,
    nonce: m.nonce,
    tsMs: m.ts_ms,
  });
  const { signed } = await signMessage(privateKey, order);
  assert.deepEqual(signed, m);
});

test('a cancel built by the dashboard signs to the cancel vector', async () => {
  const vector = validVectors.find((v) => v.kind === 'cancel');
  if (!vector) return;
  const seedHex = await seedFor(vector.public_key);
  const { privateKey, account } = await importSeed(seedHex);
  const m = vector.message;
  const cancel = buildCancel({ account, zone: m.zone, slot: m.slot, orderNonce: m.order_nonce, nonce: m.nonce, tsMs: m.ts_ms });
  const { signed } = await signMessage(privateKey, cancel);
  assert.deepEqual(signed, m);
});

/** Whether `vector`'s signature verifies under its key over its canonical signing bytes. */
async function vectorVerifies(vector) {
  const { rest, sig } = withoutSig(vector.message);
  try {
    return await verifyBytes(vector.public_key, sig, signingBytes(vector.message.type, rest));
  } catch {
    return false;
  }
}

const signedVectors = (list) => list.filter((v) => typeof v.message.sig === 'string' && v.message.type);

test('bad-signature vectors do not verify over canonical signing bytes', async () => {
  for (const vector of signedVectors(badSignatureVectors)) {
    assert.equal(await vectorVerifies(vector), false, vector.name);
  }
});

test('vectors with a refused key do not verify, a mixed-order key included', async () => {
  assert.ok(badKeyVectors.some((vector) => vector.name === 'mixed-order-key'), 'the mixed-order-key vector is there');
  for (const vector of signedVectors(badKeyVectors)) {
    assert.equal(await vectorVerifies(vector), false, vector.name);
  }
});

test('canonical JSON sorts keys, drops whitespace and refuses values outside the restricted set', () => {
  assert.equal(canonicalJson({ b: 1, a: [true, 'x"y'], c: { z: -5, y: 'é' } }), '{"a":[true,"x\\"y"],"b":1,"c":{"y":"é","z":-5}}');
  assert.throws(() => canonicalJson({ a: 1.5 }), /not an integer/);
  assert.throws(() => canonicalJson({ a: null }), /null/);
  assert.throws(() => canonicalJson({ a: 2 ** 53 }), /2\^53/);
  assert.throws(() => canonicalJson({ a: undefined }), /null/);
});

test('request headers carry a signature over the canonical request description', async () => {
  const { privateKey, account } = await importSeed('07'.repeat(32));
  const headers = await requestHeaders({ account, privateKey, method: 'get', path: '/api/v1/me/orders?x=y', tsMs: 1_790_000_000_123 });
  assert.equal(headers['X-Gridex-Account'], account);
  assert.equal(headers['X-Gridex-Timestamp'], '1790000000123');
  assert.match(headers['X-Gridex-Signature'], /^[0-9a-f]{128}$/);
  const emptySha = await sha256Hex(new Uint8Array(0));
  assert.equal(emptySha, 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  const expected = `gridex/v1/request\n{"account":"${account}","body_sha256":"${emptySha}","method":"GET","path":"/api/v1/me/orders?x=y","ts_ms":1790000000123}`;
  assert.ok(await verifyBytes(account, headers['X-Gridex-Signature'], new TextEncoder().encode(expected)));
});

test('two identical requests signed in the same millisecond differ (the server accepts a signature once)', async () => {
  const { privateKey, account } = await importSeed('07'.repeat(32));
  const request = { account, privateKey, method: 'get', path: '/api/v1/me/balances', tsMs: 1_790_000_100_000 };
  const first = await requestHeaders(request);
  const second = await requestHeaders(request);
  assert.equal(Number(second['X-Gridex-Timestamp']), Number(first['X-Gridex-Timestamp']) + 1);
  assert.notEqual(second['X-Gridex-Signature'], first['X-Gridex-Signature']);
});

test('nonces strictly increase even when the clock does not, from the clock in microseconds', () => {
  const first = nextNonce(0, 1_000);
  const second = nextNonce(first, 1_000);
  const third = nextNonce(second, 999);
  assert.equal(first, 1_000_000);
  assert.equal(second, 1_000_001);
  assert.equal(third, 1_000_002);
  assert.equal(nextNonce(5, 10_000), 10_000_000);
  // Above a trading agent of the same account, whose nonces start at its start's microseconds.
  const agentNonce = 1_796_000_000_000_000 + 5_000;
  assert.ok(nextNonce(0, 1_796_000_001_000) > agentNonce);
});

// protocol::testing::sample_statement(i), i = 0.., with account = public key of signing_key(i + 1).
async function sampleStatement(index) {
  const { account } = await importSeed(((index + 1) % 256).toString(16).padStart(2, '0').repeat(32));
  return {
    zone: 'test-zone',
    slot: 900000,
    account,
    metered_import_wh: 100,
    metered_export_wh: index * 10,
    bought_wh: 0,
    sold_wh: index * 10,
    imbalance_wh: 0,
    purchases: 0,
    sales: index * 1800,
    grid_fees: 0,
    protocol_fees: -9,
    utility_net: -25000,
    net: index * 1800 - 25009,
    tokens_earned: index,
    no_data: false,
  };
}

// Roots of sample_statement(0..n) computed independently (Python hashlib + PyNaCl, json.dumps with
// sorted keys and no whitespace) by the rules of protocol/src/merkle.rs.
const MERKLE_ROOTS = {
  1: '11e98d6012bc3dfe1728f8d22d058b9ff38685e1e0753888accbe0e435344ace',
  2: '9c27c8ae95db98884d176e92a0e7532ebbe93a7eacf4f6567e1398881a23c11b',
  3: '6d4f0004abec923fd61b7bb5a336e50428727543756495461fd93f2000913cfc',
  4: '94250e1f1f334ec050e684a6e249b2047aef401d7777e59d9f98cd3db6b1c446',
  5: '5e5debf8ec9107a8ae6710e4c07007d9e858114ac3905eb0ada85ac15c1e126f',
  6: '8c2abc4ed364711ddde2386f5aad541a61018abcf1bb78b333e474713e309812',
  7: 'e06d86719c81327b7c14afb0658231968785a2057dbeea55e686c95eba6e2d30',
};

test('merkle roots of sample statements match the independent reference', async () => {
  for (const [size, expected] of Object.entries(MERKLE_ROOTS)) {
    const statements = await Promise.all(Array.from({ length: Number(size) }, (_, i) => sampleStatement(i)));
    const leaves = await Promise.all(statements.map(statementLeafHash));
    assert.equal(await merkleRoot(leaves), expected, `size ${size}`);
  }
});

test('every leaf of trees of many sizes proves inclusion and a changed statement does not', async () => {
  for (let size = 1; size <= 7; size += 1) {
    const statements = await Promise.all(Array.from({ length: size }, (_, i) => sampleStatement(i)));
    const leaves = await Promise.all(statements.map(statementLeafHash));
    const root = await merkleRoot(leaves);
    for (let index = 0; index < size; index += 1) {
      const proof = await merkleProof(leaves, index);
      assert.ok(await verifyInclusion(statements[index], proof, root), `size ${size} index ${index}`);
      const forged = { ...statements[index], sales: statements[index].sales + 1 };
      assert.equal(await verifyInclusion(forged, proof, root), false, `forged size ${size} index ${index}`);
    }
  }
});

// The live feed (PROTOCOL.md §2.1): the exchange's messages are verified against the operator key
// pinned in the page; a message signed by another key, under another type, or unsigned is dropped.
test('live events verify against the pinned operator key only', async () => {
  const outbound = vectors.filter((vector) => vector.valid && ['trade', 'book', 'order_update'].includes(vector.kind));
  assert.ok(outbound.length >= 3, 'outbound vectors for trade, book and order_update');
  const { verifiedEvent, liveFeed } = await import('../../static/js/api.js');
  const pin = (key) => {
    globalThis.document = { querySelector: () => ({ content: key }) };
  };
  try {
    for (const vector of outbound) {
      pin(vector.public_key);
      const message = await verifiedEvent(vector.kind, vector.message);
      const { sig, type, ...expected } = vector.message;
      assert.deepEqual(message, expected, vector.name);
      const before = liveFeed.unverified;
      pin('ab'.repeat(32).replace(/^ab/, 'cd'));
      assert.equal(await verifiedEvent(vector.kind, vector.message), null, `${vector.name}: another pinned key`);
      pin(vector.public_key);
      assert.equal(await verifiedEvent(vector.kind, { ...vector.message, qty_wh: 1 }), null, `${vector.name}: tampered`);
      assert.equal(await verifiedEvent(vector.kind, expected), null, `${vector.name}: unsigned`);
      assert.equal(await verifiedEvent('book', vector.kind === 'book' ? { ...vector.message, type: 'trade' } : vector.message), null,
        `${vector.name}: under another type`);
      assert.ok(liveFeed.unverified >= before + 4);
    }
    pin('');
    assert.equal(await verifiedEvent(outbound[0].kind, outbound[0].message), null, 'nothing is believed without a pinned key');
  } finally {
    delete globalThis.document;
  }
});
