//! Market timing that both sides of the wire assume until a zone says otherwise: the exchange's
//! defaults and the gateway agent's defaults are these same values, defined once.

/// Default delivery slot: 15 minutes, the European intraday standard.
pub const SLOT_LEN_MS_DEFAULT: i64 = 15 * 60 * 1000;
/// Default gate closure: orders for a slot close 5 minutes before it starts, which leaves the grid
/// operator time to schedule.
pub const GATE_CLOSURE_MS_DEFAULT: i64 = 5 * 60 * 1000;
/// Default trading horizon: slots open for orders up to a day ahead.
pub const HORIZON_MS_DEFAULT: i64 = 24 * 60 * 60 * 1000;
