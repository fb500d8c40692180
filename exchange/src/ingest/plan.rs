//! The rules a battery plan (PROTOCOL.md §4.7) must meet before the exchange stores it: pure, so
//! the plan stage ([`crate::service`]'s `plans.rs`) runs them after its registry look-ups and the
//! store decides only on the nonce. A plan is information for the household: it never reaches a
//! book or the ledger, so these are all its rules.

use super::{Limits, Rejection, ZoneInfo};
use protocol::plan::BATTERY_PLAN_SLOTS_MAX;
use protocol::{BatteryPlan, Reason, SlotId, TimestampMs, ZoneId};

/// What the registry says of the plan's account and zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanContext {
    /// The plan's zone, if the exchange knows it.
    pub zone: Option<ZoneInfo>,
    /// `None`: the account is not registered; `Some(None)`: registered for no zone (it may trade in
    /// any zone, so it may plan in any); `Some(Some(zone))`: registered to `zone`.
    pub account_zone: Option<Option<ZoneId>>,
}

/// Checks a plan whose signature verified: a registered account in the plan's zone, a fresh
/// `ts_ms`, and slots aligned to the zone's slot length from the slot before the current one up to
/// the plan horizon ([`BATTERY_PLAN_SLOTS_MAX`] slots after the current one). The nonce is the
/// store's to check (`exchange::store::plans`).
pub fn check_plan(plan: &BatteryPlan, context: &PlanContext, limits: &Limits, now_ms: i64) -> Result<(), Rejection> {
    let Some(zone) = context.zone else {
        return Err(Rejection::new(Reason::UnknownZone, format!("zone `{}` is not served here", plan.zone)));
    };
    match &context.account_zone {
        None => return Err(Rejection::new(Reason::UnknownKey, "the account is not registered")),
        Some(Some(registered)) if *registered != plan.zone => {
            return Err(Rejection::new(
                Reason::ZoneMismatch,
                format!("the account is registered to zone `{registered}`"),
            ));
        }
        Some(_) => {}
    }
    if plan.ts_ms.0 < now_ms.saturating_sub(limits.order_age_ms_max) {
        let age_ms_max = limits.order_age_ms_max;
        return Err(Rejection::new(Reason::TimestampTooOld, format!("older than {age_ms_max} ms")));
    }
    if plan.ts_ms.0 > now_ms.saturating_add(limits.future_skew_ms_max) {
        return Err(Rejection::new(Reason::TimestampInFuture, "the timestamp is ahead of the exchange's clock"));
    }
    let slot_len_ms = zone.slot_len_ms;
    if let Some(misaligned) = plan.slots.iter().find(|entry| !entry.slot.is_aligned(slot_len_ms)) {
        return Err(Rejection::new(
            Reason::SlotMisaligned,
            format!("slot {} is not a multiple of the zone's {slot_len_ms} ms slots", misaligned.slot.start().0),
        ));
    }
    let current_ms = SlotId::containing(TimestampMs(now_ms), slot_len_ms).start().0;
    let earliest_ms = current_ms.saturating_sub(slot_len_ms);
    let slots_ahead = i64::try_from(BATTERY_PLAN_SLOTS_MAX).unwrap_or(i64::MAX);
    let latest_ms = current_ms.saturating_add(slots_ahead.saturating_mul(slot_len_ms));
    if let (Some(first), Some(last)) = (plan.first_slot(), plan.last_slot()) {
        if first.start().0 < earliest_ms {
            return Err(Rejection::new(Reason::SlotNotOpen, "the plan starts more than one slot in the past"));
        }
        if last.start().0 > latest_ms {
            return Err(Rejection::new(
                Reason::SlotNotOpen,
                format!("the plan reaches beyond {BATTERY_PLAN_SLOTS_MAX} slots ahead"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExchangeConfig;
    use protocol::testing::{sample_battery_plan, signing_key, zone};

    const SLOT_MS: i64 = 900_000;

    fn limits() -> Limits {
        Limits::from(&ExchangeConfig::new(protocol::testing::operator_key()))
    }

    fn context() -> PlanContext {
        PlanContext { zone: Some(ZoneInfo { slot_len_ms: SLOT_MS }), account_zone: Some(Some(zone())) }
    }

    /// The sample plan, made now (its `ts_ms`), starts at the next slot.
    fn now_of(plan: &BatteryPlan) -> i64 {
        plan.ts_ms.0
    }

    #[test]
    fn a_plan_of_the_next_day_of_slots_passes() {
        let plan = sample_battery_plan(&signing_key(3), 96);
        check_plan(&plan, &context(), &limits(), now_of(&plan)).expect("a valid plan");
    }

    #[test]
    fn a_misaligned_slot_is_refused() {
        let mut plan = sample_battery_plan(&signing_key(3), 4);
        plan.slots[2].slot = SlotId::new(plan.slots[2].slot.start().0 + 60_000).expect("a slot");
        let error = check_plan(&plan, &context(), &limits(), now_of(&plan)).unwrap_err();
        assert_eq!(error.reason, Reason::SlotMisaligned);
    }

    #[test]
    fn a_plan_for_past_slots_or_beyond_the_horizon_is_refused() {
        let plan = sample_battery_plan(&signing_key(3), 4);
        let later = now_of(&plan) + 3 * SLOT_MS;
        let mut late = plan.clone();
        late.ts_ms = TimestampMs(later);
        assert_eq!(check_plan(&late, &context(), &limits(), later).unwrap_err().reason, Reason::SlotNotOpen);
        let earlier = now_of(&plan) - 100 * SLOT_MS;
        let mut early = plan;
        early.ts_ms = TimestampMs(earlier);
        assert_eq!(check_plan(&early, &context(), &limits(), earlier).unwrap_err().reason, Reason::SlotNotOpen);
    }

    #[test]
    fn an_unregistered_account_or_another_zone_is_refused() {
        let plan = sample_battery_plan(&signing_key(3), 4);
        let unknown = PlanContext { account_zone: None, ..context() };
        assert_eq!(check_plan(&plan, &unknown, &limits(), now_of(&plan)).unwrap_err().reason, Reason::UnknownKey);
        let elsewhere = PlanContext { account_zone: Some(Some(ZoneId::parse("other").expect("a zone"))), ..context() };
        assert_eq!(check_plan(&plan, &elsewhere, &limits(), now_of(&plan)).unwrap_err().reason, Reason::ZoneMismatch);
        let anywhere = PlanContext { account_zone: Some(None), ..context() };
        check_plan(&plan, &anywhere, &limits(), now_of(&plan)).expect("an account of no zone plans anywhere");
    }
}
