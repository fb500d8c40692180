// Display formatting of protocol units. Values arrive as integers in protocol units (micro-money,
// micro-money per kWh, Wh, micro-tokens, unix ms); they are turned into text only here, and text the
// user types is parsed back into integers without floating-point arithmetic.

/**
 * The server's display settings (`[display]`: currency, symbol, locale), pinned in the page like the
 * operator key; the defaults outside a page (tests) or when absent.
 */
function displaySettings() {
  const fallback = { currency: 'EUR', symbol: '€', locale: 'en-US' };
  if (typeof document === 'undefined') return fallback;
  const content = document.querySelector('meta[name="gridex-display"]')?.getAttribute('content');
  try {
    const parsed = content ? JSON.parse(content) : {};
    return { ...fallback, ...parsed };
  } catch {
    return fallback;
  }
}

const DISPLAY = displaySettings();
/** Symbol of the settlement currency (the protocol only says "micro-units of the currency"). */
export const CURRENCY = DISPLAY.symbol;
/** ISO 4217 code of the settlement currency. */
export const CURRENCY_CODE = DISPLAY.currency;
/** The locale numbers are grouped and separated in. */
export const LOCALE = DISPLAY.locale;
/** The locale's decimal separator ("." in en-US, "," in de-DE). */
const DECIMAL_SEPARATOR = (() => {
  try {
    return new Intl.NumberFormat(LOCALE).formatToParts(1.5).find((part) => part.type === 'decimal')?.value ?? '.';
  } catch {
    return '.';
  }
})();
export const MICROS_PER_UNIT = 1_000_000;
export const WH_PER_KWH = 1_000;

/** `value` (an integer count of 10^-scale units) as a decimal string with minDigits..maxDigits decimals. */
function decimal(value, scale, minDigits, maxDigits) {
  if (value === null || value === undefined || !Number.isFinite(Number(value))) return '–';
  const number = Math.round(Number(value));
  const negative = number < 0;
  // Round half away from zero to maxDigits decimals, in integers.
  const drop = 10 ** (scale - maxDigits);
  const rounded = Math.round(Math.abs(number) / drop);
  const unit = 10 ** maxDigits;
  const whole = Math.floor(rounded / unit);
  let fraction = String(rounded % unit).padStart(maxDigits, '0');
  while (fraction.length > minDigits && fraction.endsWith('0')) fraction = fraction.slice(0, -1);
  let wholeText;
  try {
    wholeText = whole.toLocaleString(LOCALE);
  } catch {
    wholeText = whole.toLocaleString('en-US');
  }
  const text = fraction.length ? `${wholeText}${DECIMAL_SEPARATOR}${fraction}` : wholeText;
  return negative && rounded !== 0 ? `−${text}` : text;
}

/** Micro-money as currency with 2–4 decimals: 1234567 → "€1.2346". */
export function money(micro) {
  // Two decimals when they are exact, else four, so that a column never mixes three.
  const exactCents = Math.round(Number(micro) / 100) % 100 === 0;
  const text = decimal(micro, 6, exactCents ? 2 : 4, 4);
  return text.startsWith('−') ? `−${CURRENCY}${text.slice(1)}` : `${CURRENCY}${text}`;
}

/** Micro-money per kWh: 183500 → "€0.1835/kWh". */
export function price(microPerKwh) {
  const text = decimal(microPerKwh, 6, 4, 4);
  return text.startsWith('−') ? `−${CURRENCY}${text.slice(1)}/kWh` : `${CURRENCY}${text}/kWh`;
}

/** A price without unit, for dense tables and axes: 183500 → "0.1835". */
export function priceNumber(microPerKwh) {
  return decimal(microPerKwh, 6, 4, 4);
}

/** Wh as kWh: 1500 → "1.5 kWh". */
export function energy(wh, maxDigits = 3) {
  return `${decimal(wh, 3, 0, maxDigits)} kWh`;
}

/** Wh as a bare kWh number: 1500 → "1.500". */
export function energyNumber(wh) {
  return decimal(wh, 3, 3, 3);
}

/** Micro-tokens as GRID: 1500000 → "1.50 GRID". */
export function tokens(micro) {
  return `${decimal(micro, 6, 2, 6)} GRID`;
}

/** Basis points as a percentage: 4567 → "45.67 %". */
export function percentBps(bps) {
  return `${decimal(bps, 2, 1, 2)} %`;
}

function pad2(n) {
  return String(n).padStart(2, '0');
}

/** A slot start as "HH:MM" (local time), with the date when it is not today. */
export function slotLabel(slotMs, withDate = false) {
  const date = new Date(Number(slotMs));
  const time = `${pad2(date.getHours())}:${pad2(date.getMinutes())}`;
  if (!withDate) return time;
  return `${date.getFullYear()}-${pad2(date.getMonth() + 1)}-${pad2(date.getDate())} ${time}`;
}

export function timeLabel(ms) {
  const date = new Date(Number(ms));
  return `${pad2(date.getHours())}:${pad2(date.getMinutes())}:${pad2(date.getSeconds())}`;
}

/** Shortens a 64-hex account id: "ed4928…37d1". */
export function shortId(hex) {
  const text = String(hex ?? '');
  return text.length > 12 ? `${text.slice(0, 6)}…${text.slice(-4)}` : text;
}

/**
 * Parses a decimal the user typed ("0.1835", "1,5") into an integer count of 10^-scale units,
 * without floats. Returns null when it is not a non-negative decimal with at most `scale` decimals.
 */
export function parseDecimal(text, scale) {
  const clean = String(text).trim().replace(',', '.');
  const match = /^(\d*)(?:\.(\d*))?$/.exec(clean);
  if (!match || (match[1] === '' && (match[2] ?? '') === '')) return null;
  const fraction = match[2] ?? '';
  if (fraction.length > scale) return null;
  const value = Number(match[1] || '0') * 10 ** scale + Number(fraction.padEnd(scale, '0') || '0');
  return Number.isSafeInteger(value) ? value : null;
}

/** A number's text without trailing fraction zeros (and without a bare separator): "1.500" → "1.5", "2.000" → "2". */
export function trimZeros(text) {
  const at = text.lastIndexOf(DECIMAL_SEPARATOR);
  if (at < 0) return text;
  const trimmed = text.replace(/0+$/, '');
  return trimmed.endsWith(DECIMAL_SEPARATOR) ? trimmed.slice(0, -DECIMAL_SEPARATOR.length) : trimmed;
}

/** Escapes text for HTML. */
export function esc(value) {
  return String(value ?? '').replace(/[&<>"']/g, (ch) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[ch]);
}
