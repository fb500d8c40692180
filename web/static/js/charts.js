// Small SVG charts drawn from protocol integers: a depth chart, a price chart (candles, close line,
// volume bars), an energy chart (production, consumption, grid exchange per interval) and a battery
// chart (charge and discharge per slot, state of charge). Each
// function returns SVG markup sized by its viewBox, so it scales to the width of its container.
import { esc, energyNumber, priceNumber, slotLabel, trimZeros } from './format.js';

/** Width of a chart when its container's width is not known (e.g. not laid out yet). */
const WIDTH_DEFAULT = 640;
/** Narrowest drawing: below this the chart is scaled down instead of squeezed. */
const WIDTH_MIN = 300;
const MARGIN = { top: 24, right: 16, bottom: 30, left: 56 };

/**
 * Draws `chart(data, width)` into `element` at the element's own width (so text keeps its size on
 * a phone) and remembers it, so that the chart is redrawn when the window is resized.
 */
export function draw(element, chart, data) {
  element.__chart = () => {
    const width = Math.max(WIDTH_MIN, Math.floor(element.clientWidth || WIDTH_DEFAULT));
    element.innerHTML = chart(data, width);
  };
  element.__chart();
}

let resizeTimer = null;
if (typeof window !== 'undefined') {
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const element of document.querySelectorAll('.chart-box')) element.__chart?.();
    }, 150);
  });
}

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw || 1));
  const unit = [1, 2, 2.5, 5, 10].find((m) => m * power >= raw) ?? 10;
  return unit * power;
}

/** Round tick values covering [min, max]. */
function ticks(min, max, count) {
  if (!(max > min)) return [min];
  const step = niceStep(max - min, count);
  const out = [];
  for (let value = Math.ceil(min / step) * step; value <= max + step * 1e-9; value += step) out.push(value);
  return out;
}

function frame(width, height, body, label) {
  return `<svg class="chart" viewBox="0 0 ${width} ${height}" role="img" aria-label="${esc(label)}" xmlns="http://www.w3.org/2000/svg">${body}</svg>`;
}

function empty(width, height, text) {
  return frame(width, height, `<text class="chart-empty" x="${width / 2}" y="${height / 2}" text-anchor="middle">${esc(text)}</text>`, text);
}

function yAxis(scaleY, values, format, left, right) {
  return values
    .map((value) => {
      const y = scaleY(value).toFixed(1);
      return `<line class="grid" x1="${left}" x2="${right}" y1="${y}" y2="${y}"/><text class="axis" x="${left - 6}" y="${y}" dy="0.32em" text-anchor="end">${esc(format(value))}</text>`;
    })
    .join('');
}

/** Labels under the x axis for `items` (one per slot, `slotOf` its start), every few as fit in `width`. */
function slotLabels(items, slotOf, cx, bottom, width) {
  const every = Math.max(1, Math.ceil(items.length / Math.max(2, Math.floor(width / 70))));
  return items
    .map((r, i) => (i % every === 0 ? `<text class="axis" x="${cx(i).toFixed(1)}" y="${bottom + 18}" text-anchor="middle">${esc(slotLabel(slotOf(r)))}</text>` : ''))
    .join('');
}

/**
 * The scales of a chart of `count` slots with bars up from zero to `top` and down to `floor`
 * (≤ 0), 8 % of the span spare: the y scale, the slots' centres and the bars' width.
 */
function upDownScales(count, top, floor, left, right, bottom) {
  const span = (top - floor) * 1.08;
  const high = top + (span - (top - floor)) / 2;
  const low = floor - (span - (top - floor)) / 2;
  const band = (right - left) / count;
  const cx = (i) => left + band * (i + 0.5);
  const y = (v) => bottom - ((v - low) / (high - low)) * (bottom - MARGIN.top);
  const barWidth = Math.max(1.5, Math.min(14, band * 0.6));
  return { low, high, cx, y, barWidth };
}

/** A slot's bars at `x0`: `up` (class `upClass`) above zero and `down` below it, each only when > 0. */
function upDownBars(x0, barWidth, y, upClass, up, downClass, down) {
  const upBar = up > 0 ? `<rect class="${upClass}" x="${x0}" y="${y(up).toFixed(1)}" width="${barWidth.toFixed(1)}" height="${(y(0) - y(up)).toFixed(1)}"/>` : '';
  const downBar = down > 0 ? `<rect class="${downClass}" x="${x0}" y="${y(0).toFixed(1)}" width="${barWidth.toFixed(1)}" height="${(y(-down) - y(0)).toFixed(1)}"/>` : '';
  return upBar + downBar;
}

/** The y axis of an up-and-down chart (`tickCount` ticks in kWh) and its zero line. */
function upDownAxis(y, low, high, tickCount, left, right) {
  return yAxis(y, ticks(low, high, tickCount), (v) => trimZeros(energyNumber(v)) || '0', left, right)
    + `<line class="zero-line" x1="${left}" x2="${right}" y1="${y(0).toFixed(1)}" y2="${y(0).toFixed(1)}"/>`;
}

function cumulative(levels) {
  let total = 0;
  return levels.map((level) => {
    total += Number(level.qty_wh);
    return { price: Number(level.price_per_kwh), total };
  });
}

/** Depth chart of a book snapshot: cumulative bid and ask quantity (kWh) by price. */
export function depthChart(book, width = WIDTH_DEFAULT, height = 240) {
  const bids = cumulative([...(book?.bids ?? [])].sort((a, b) => b.price_per_kwh - a.price_per_kwh));
  const asks = cumulative([...(book?.asks ?? [])].sort((a, b) => a.price_per_kwh - b.price_per_kwh));
  if (bids.length === 0 && asks.length === 0) return empty(width, height, 'No orders in this slot yet');
  const prices = [...bids, ...asks].map((p) => p.price);
  let low = Math.min(...prices);
  let high = Math.max(...prices);
  const pad = Math.max((high - low) * 0.08, 5_000);
  low -= pad;
  high += pad;
  const depth = Math.max(1, ...bids.map((p) => p.total), ...asks.map((p) => p.total)) * 1.1;
  const left = MARGIN.left;
  const right = width - MARGIN.right;
  const bottom = height - MARGIN.bottom;
  const x = (p) => left + ((p - low) / (high - low)) * (right - left);
  const y = (q) => bottom - (q / depth) * (bottom - MARGIN.top);
  const side = (points, edge) => {
    if (points.length === 0) return '';
    let d = `M${x(points[0].price).toFixed(1)},${y(0).toFixed(1)}`;
    let previous = 0;
    for (const point of points) {
      d += ` L${x(point.price).toFixed(1)},${y(previous).toFixed(1)} L${x(point.price).toFixed(1)},${y(point.total).toFixed(1)}`;
      previous = point.total;
    }
    d += ` L${x(edge).toFixed(1)},${y(previous).toFixed(1)} L${x(edge).toFixed(1)},${y(0).toFixed(1)} Z`;
    return d;
  };
  const priceTicks = ticks(low, high, Math.max(3, Math.floor(width / 120)))
    .map((p) => `<text class="axis" x="${x(p).toFixed(1)}" y="${bottom + 18}" text-anchor="middle">${esc(priceNumber(p))}</text>`)
    .join('');
  const body = [
    yAxis(y, ticks(0, depth, 4), (q) => trimZeros(energyNumber(q)), left, right),
    `<path class="depth-bid" d="${side(bids, low)}"/>`,
    `<path class="depth-ask" d="${side(asks, high)}"/>`,
    `<line class="axis-line" x1="${left}" x2="${right}" y1="${bottom}" y2="${bottom}"/>`,
    priceTicks,
    `<text class="axis-title" x="${right}" y="${height - 2}" text-anchor="end">price per kWh</text>`,
    `<text class="axis-title" x="4" y="${MARGIN.top - 4}">kWh</text>`,
  ].join('');
  return frame(width, height, body, 'Depth chart: cumulative bids and asks by price');
}

/** Price chart across slots: candles (open/high/low/close), close line and volume bars. */
export function priceChart(rows, width = WIDTH_DEFAULT, height = 260) {
  const data = (rows ?? []).filter((row) => Number(row.trades ?? 1) > 0 && row.close != null);
  if (data.length === 0) return empty(width, height, 'No trades yet');
  data.sort((a, b) => a.slot - b.slot);
  const left = MARGIN.left;
  const right = width - MARGIN.right;
  const bottom = height - MARGIN.bottom;
  const volumeTop = bottom - (bottom - MARGIN.top) * 0.25;
  const priceBottom = volumeTop - 8;
  let low = Math.min(...data.map((r) => Number(r.low)));
  let high = Math.max(...data.map((r) => Number(r.high)));
  const pad = Math.max((high - low) * 0.1, 2_000);
  low -= pad;
  high += pad;
  const maxVolume = Math.max(1, ...data.map((r) => Number(r.volume_wh)));
  const band = (right - left) / data.length;
  const cx = (i) => left + band * (i + 0.5);
  const y = (p) => priceBottom - ((p - low) / (high - low)) * (priceBottom - MARGIN.top);
  const vy = (v) => bottom - (v / maxVolume) * (bottom - volumeTop);
  const bodyWidth = Math.max(2, Math.min(18, band * 0.6));
  const candles = data
    .map((r, i) => {
      const up = Number(r.close) >= Number(r.open);
      const top = y(Math.max(r.open, r.close));
      const h = Math.max(1, Math.abs(y(r.open) - y(r.close)));
      const title = `${slotLabel(r.slot, true)} O ${priceNumber(r.open)} H ${priceNumber(r.high)} L ${priceNumber(r.low)} C ${priceNumber(r.close)}, ${energyNumber(r.volume_wh)} kWh`;
      return `<g class="${up ? 'candle-up' : 'candle-down'}"><title>${esc(title)}</title>`
        + `<line x1="${cx(i).toFixed(1)}" x2="${cx(i).toFixed(1)}" y1="${y(r.high).toFixed(1)}" y2="${y(r.low).toFixed(1)}"/>`
        + `<rect x="${(cx(i) - bodyWidth / 2).toFixed(1)}" y="${top.toFixed(1)}" width="${bodyWidth.toFixed(1)}" height="${h.toFixed(1)}"/>`
        + `<rect class="volume" x="${(cx(i) - bodyWidth / 2).toFixed(1)}" y="${vy(r.volume_wh).toFixed(1)}" width="${bodyWidth.toFixed(1)}" height="${(bottom - vy(r.volume_wh)).toFixed(1)}"/></g>`;
    })
    .join('');
  const close = data.map((r, i) => `${i ? 'L' : 'M'}${cx(i).toFixed(1)},${y(r.close).toFixed(1)}`).join(' ');
  const labels = slotLabels(data, (r) => r.slot, cx, bottom, width);
  const body = [
    yAxis(y, ticks(low, high, 4), priceNumber, left, right),
    candles,
    `<path class="close-line" d="${close}"/>`,
    `<line class="axis-line" x1="${left}" x2="${right}" y1="${bottom}" y2="${bottom}"/>`,
    `<text class="axis" x="${left - 6}" y="${volumeTop}" dy="0.32em" text-anchor="end">${esc(trimZeros(energyNumber(maxVolume)))}</text>`,
    labels,
    `<text class="axis-title" x="4" y="${MARGIN.top - 4}">per kWh</text>`,
    `<text class="axis-title" x="${right}" y="${volumeTop - 2}" text-anchor="end">volume (kWh)</text>`,
  ].join('');
  return frame(width, height, body, `Price chart over ${data.length} slots`);
}

/**
 * Energy per interval: `rows` of {start_ms, production_wh, consumption_wh, import_wh, export_wh}.
 * Bars show grid exchange (import up, export down); lines show production and consumption.
 */
export function energyChart(rows, width = WIDTH_DEFAULT, height = 240) {
  if (!rows || rows.length === 0) return empty(width, height, 'No meter readings yet');
  const left = MARGIN.left;
  const right = width - MARGIN.right;
  const bottom = height - MARGIN.bottom;
  const top = Math.max(1, ...rows.map((r) => Math.max(r.production_wh, r.consumption_wh, r.import_wh)));
  const floor = -Math.max(0, ...rows.map((r) => r.export_wh));
  const { low, high, cx, y, barWidth } = upDownScales(rows.length, top, floor, left, right, bottom);
  const bars = rows
    .map((r, i) => upDownBars((cx(i) - barWidth / 2).toFixed(1), barWidth, y, 'bar-import', r.import_wh, 'bar-export', r.export_wh))
    .join('');
  const line = (key) => rows.map((r, i) => `${i ? 'L' : 'M'}${cx(i).toFixed(1)},${y(r[key]).toFixed(1)}`).join(' ');
  const labels = slotLabels(rows, (r) => r.start_ms, cx, bottom, width);
  const body = [
    upDownAxis(y, low, high, 5, left, right),
    bars,
    `<path class="line-production" d="${line('production_wh')}"/>`,
    `<path class="line-consumption" d="${line('consumption_wh')}"/>`,
    labels,
    `<text class="axis-title" x="4" y="${MARGIN.top - 4}">kWh per interval</text>`,
  ].join('');
  return frame(width, height, body, 'Production, consumption and grid exchange per interval');
}

/**
 * A home battery (or a zone's batteries) per slot: `rows` of {slot, charge_wh, discharge_wh,
 * soc_permille?} (energy may be null: unknown). Bars show charge (up) and discharge (down) in kWh;
 * when any row has a state of charge, a line shows it against a 0–100 % scale on the right.
 */
export function batteryChart(rows, width = WIDTH_DEFAULT, height = 220) {
  const data = (rows ?? []).filter((row) => row.charge_wh != null || row.discharge_wh != null || row.soc_permille != null);
  if (data.length === 0) return empty(width, height, 'No battery readings yet');
  const withSoc = data.some((row) => row.soc_permille != null);
  const left = MARGIN.left;
  const right = width - (withSoc ? 40 : MARGIN.right);
  const bottom = height - MARGIN.bottom;
  const top = Math.max(1, ...data.map((r) => Number(r.charge_wh ?? 0)));
  const floor = -Math.max(1, ...data.map((r) => Number(r.discharge_wh ?? 0)));
  const { low, high, cx, y, barWidth } = upDownScales(data.length, top, floor, left, right, bottom);
  const socY = (permille) => bottom - (permille / 1000) * (bottom - MARGIN.top);
  const bars = data
    .map((r, i) => {
      const charge = Number(r.charge_wh ?? 0);
      const discharge = Number(r.discharge_wh ?? 0);
      const title = `${slotLabel(r.slot, true)}: charged ${energyNumber(charge)} kWh, discharged ${energyNumber(discharge)} kWh`;
      const x0 = (cx(i) - barWidth / 2).toFixed(1);
      return `<g><title>${esc(title)}</title>${upDownBars(x0, barWidth, y, 'bar-charge', charge, 'bar-discharge', discharge)}</g>`;
    })
    .join('');
  let socLine = '';
  let socAxis = '';
  if (withSoc) {
    const points = data.map((r, i) => (r.soc_permille == null ? null : [i, r.soc_permille])).filter(Boolean);
    // A dot per point too, so that a single slot's state of charge shows.
    socLine = `<path class="line-soc" d="${points
      .map(([i, soc], index) => `${index ? 'L' : 'M'}${cx(i).toFixed(1)},${socY(soc).toFixed(1)}`)
      .join(' ')}"/>${points
      .map(([i, soc]) => `<circle class="dot-soc" cx="${cx(i).toFixed(1)}" cy="${socY(soc).toFixed(1)}" r="2.5"><title>${esc(`${slotLabel(data[i].slot, true)}: ${soc / 10} %`)}</title></circle>`)
      .join('')}`;
    socAxis = [0, 500, 1000]
      .map((permille) => `<text class="axis" x="${right + 6}" y="${socY(permille).toFixed(1)}" dy="0.32em">${permille / 10} %</text>`)
      .join('');
  }
  const labels = slotLabels(data, (r) => r.slot, cx, bottom, width);
  const body = [
    upDownAxis(y, low, high, 4, left, right),
    bars,
    socLine,
    socAxis,
    labels,
    `<text class="axis-title" x="4" y="${MARGIN.top - 4}">kWh per slot (charge up, discharge down)</text>`,
  ].join('');
  return frame(width, height, body, `Battery charge, discharge${withSoc ? ' and state of charge' : ''} over ${data.length} slots`);
}

/** A horizontal bar split into parts [{value, className, label}]. */
export function splitBar(parts) {
  const total = parts.reduce((sum, part) => sum + Math.max(0, part.value), 0);
  if (total <= 0) return '<div class="split-bar empty"></div>';
  return `<div class="split-bar">${parts
    .map((part) => `<span class="${part.className}" style="width:${((Math.max(0, part.value) / total) * 100).toFixed(2)}%" title="${esc(part.label)}"></span>`)
    .join('')}</div>`;
}
