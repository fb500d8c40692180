// An estimate of the exchange's clock. In the demo the exchange runs a scaled clock (a 15-minute
// slot passes in about 15 s), so a signed order must carry the exchange's time, not the browser's.
// The estimate comes from GET /api/v1/clock when the server has it, else from the `ts_ms` of live
// events (book snapshots, trades) observed together with the local monotonic time.

/** Fewest local milliseconds between two observations before their ratio is trusted as the speed. */
const SPEED_BASELINE_MS = 3_000;
/** Samples kept; old ones are dropped so that a restarted demo is followed. */
const SAMPLES_MAX = 64;

const samples = [];
let declaredSpeed = null;

export function observe(serverMs) {
  const value = Number(serverMs);
  if (!Number.isFinite(value) || value <= 0) return;
  samples.push({ local: performance.now(), server: value });
  if (samples.length > SAMPLES_MAX) samples.shift();
}

export function setFromServer({ now_ms: nowMs, speed }) {
  if (Number.isFinite(speed) && speed >= 1) declaredSpeed = speed;
  samples.length = 0;
  observe(nowMs);
}

/** The exchange clock's speed relative to real time (1 outside the demo). */
export function speed() {
  if (declaredSpeed) return declaredSpeed;
  if (samples.length < 2) return 1;
  const first = samples[0];
  const last = samples[samples.length - 1];
  const localSpan = last.local - first.local;
  if (localSpan < SPEED_BASELINE_MS) return 1;
  // The demo's ScaledClock speed is an integer; round the measured ratio to one.
  return Math.max(1, Math.round((last.server - first.server) / localSpan));
}

/** The exchange's time now, in unix ms. Events arrive a little after they happen, hence max(). */
export function now() {
  if (samples.length === 0) return Date.now();
  const rate = speed();
  let best = -Infinity;
  const local = performance.now();
  for (const sample of samples.slice(-8)) best = Math.max(best, sample.server + rate * (local - sample.local));
  return Math.floor(best);
}

/** True once the estimate rests on the server's clock rather than on the browser's. */
export function synced() {
  return samples.length > 0;
}
