// The dashboard's number formatting under the server's `[display]` settings (pinned in the page as
// `<meta name="gridex-display">`): read once when the module loads, as in the browser.
import { test } from 'node:test';
import assert from 'node:assert/strict';

const pinned = { currency: 'EUR', symbol: '€', locale: 'de-DE' };
globalThis.document = {
  querySelector: (selector) =>
    selector === 'meta[name="gridex-display"]' ? { getAttribute: () => JSON.stringify(pinned) } : null,
};
const format = await import('../../static/js/format.js');

test('amounts follow the configured locale: de-DE groups with dots and separates decimals with a comma', () => {
  assert.equal(format.CURRENCY, '€');
  assert.equal(format.LOCALE, 'de-DE');
  assert.equal(format.money(1_234_567_890), '€1.234,5679');
  assert.equal(format.price(183_500), '€0,1835/kWh');
  assert.equal(format.energy(1_500), '1,5 kWh');
  assert.equal(format.trimZeros(format.energyNumber(2_000)), '2');
});

test('what the user types is read with either separator, exactly, without floats', () => {
  assert.equal(format.parseDecimal('0,25', 6), 250_000);
  assert.equal(format.parseDecimal('0.25', 6), 250_000);
  assert.equal(format.parseDecimal('0,1234567', 6), null, 'more decimals than the unit has');
});
