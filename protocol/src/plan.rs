//! `battery_plan`: a household's home-battery plan, signed by its account key (PROTOCOL.md §4.7).
//!
//! A trading agent with a battery plans a day of slots ahead (charge or discharge per slot) and
//! publishes that plan so the household sees it. A plan is information, not a command: it never
//! reaches a book or the ledger. The exchange keeps the latest one per account.

use crate::ids::{AccountId, SlotId, ZoneId};
use crate::messages::BATTERY_SOC_PERMILLE_MAX;
use crate::reason::Reason;
use crate::units::{TimestampMs, Wh};
use crate::wire::{ProtocolError, Signable, WireMessage};
use serde::{Deserialize, Serialize};

/// Most slots one plan may name: a day of 15-minute slots, the agent's horizon.
pub const BATTERY_PLAN_SLOTS_MAX: usize = 96;
/// Largest `battery_plan` message. An entry encodes to at most about 70 bytes (a 13-digit slot, a
/// signed energy, a state of charge), so 96 entries and the envelope fit in 8 KiB with room to spare;
/// larger than the 1 KiB of other inbound messages, and still bounded.
pub const BATTERY_PLAN_BYTES_MAX: usize = 8 * 1024;
/// Largest energy one slot of a plan may name, either way: 1 GWh is beyond any home battery, and
/// keeps sums over a plan far from overflow.
pub const BATTERY_PLAN_SLOT_WH_MAX: i64 = 1_000_000_000;

/// One slot of a battery plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedSlot {
    /// The delivery slot's start (ms), a multiple of the zone's slot length.
    pub slot: SlotId,
    /// Planned AC energy of the battery in the slot: positive charges, negative discharges.
    pub charge_wh: Wh,
    /// Planned state of charge at the slot's end, ‰ (1000 = full).
    pub soc_permille_end: u16,
}

/// The latest plan of an account's home battery, signed by the account key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatteryPlan {
    pub account: AccountId,
    pub zone: ZoneId,
    /// Strictly increasing per account among its plans (its own sequence, not the orders' nonces):
    /// a plan whose nonce is not above the stored one's is `replayed`.
    pub nonce: u64,
    /// When the plan was made.
    pub ts_ms: TimestampMs,
    /// Upcoming slots in increasing order, at most [`BATTERY_PLAN_SLOTS_MAX`].
    pub slots: Vec<PlannedSlot>,
}

fn invalid(field: &str, text: &str) -> ProtocolError {
    ProtocolError::new(Reason::InvalidValue, format!("`{field}` {text}"))
}

impl WireMessage for BatteryPlan {
    const TYPE: &'static str = "battery_plan";
    const SIZE_MAX: usize = BATTERY_PLAN_BYTES_MAX;
    fn validate(&self) -> Result<(), ProtocolError> {
        if self.ts_ms.0 < 0 {
            return Err(invalid("ts_ms", "must be a unix time in milliseconds"));
        }
        if self.slots.len() > BATTERY_PLAN_SLOTS_MAX {
            return Err(invalid("slots", "has more than 96 entries"));
        }
        for slot in &self.slots {
            if slot.charge_wh.0.abs() > BATTERY_PLAN_SLOT_WH_MAX {
                return Err(invalid("charge_wh", "exceeds 1 GWh"));
            }
            if slot.soc_permille_end > BATTERY_SOC_PERMILLE_MAX {
                return Err(invalid("soc_permille_end", "must be at most 1000"));
            }
        }
        if self.slots.windows(2).any(|pair| pair[0].slot >= pair[1].slot) {
            return Err(invalid("slots", "must be in strictly increasing slot order"));
        }
        Ok(())
    }
}

impl Signable for BatteryPlan {
    fn signer(&self) -> [u8; 32] {
        self.account.0
    }
}

impl BatteryPlan {
    /// The first planned slot, if any.
    pub fn first_slot(&self) -> Option<SlotId> {
        self.slots.first().map(|slot| slot.slot)
    }
    /// The last planned slot, if any.
    pub fn last_slot(&self) -> Option<SlotId> {
        self.slots.last().map(|slot| slot.slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{sample_battery_plan, signing_key};
    use crate::wire::Signed;

    #[test]
    fn a_battery_plan_round_trips_signed_by_its_account() {
        let key = signing_key(3);
        let plan = sample_battery_plan(&key, 96);
        let signed = Signed::sign(plan.clone(), &key).expect("signs");
        assert!(signed.signing_bytes().starts_with(b"gridex/v1/battery_plan\n{"));
        let json = signed.to_json();
        assert!(json.len() <= BATTERY_PLAN_BYTES_MAX, "a full plan fits: {} bytes", json.len());
        let parsed = Signed::<BatteryPlan>::parse(&json).expect("parses");
        parsed.verify().expect("verifies");
        assert_eq!(parsed.message, plan);
    }

    #[test]
    fn a_plan_of_more_than_96_slots_is_refused() {
        let key = signing_key(3);
        let plan = sample_battery_plan(&key, BATTERY_PLAN_SLOTS_MAX + 1);
        assert_eq!(Signed::sign(plan, &key).unwrap_err().reason, Reason::InvalidValue);
    }

    #[test]
    fn a_plan_signed_by_another_key_is_refused() {
        let key = signing_key(3);
        let plan = sample_battery_plan(&key, 4);
        assert_eq!(Signed::sign(plan.clone(), &signing_key(1)).unwrap_err().reason, Reason::BadSignature);
        let forged = Signed::with_signature(plan, [7u8; 64]).expect("well-formed");
        assert!(forged.verify().is_err());
    }

    #[test]
    fn slots_out_of_order_or_out_of_range_are_invalid_values() {
        let key = signing_key(3);
        let mut unordered = sample_battery_plan(&key, 3);
        unordered.slots.swap(0, 1);
        assert_eq!(Signed::sign(unordered, &key).unwrap_err().reason, Reason::InvalidValue);
        let mut overfull = sample_battery_plan(&key, 3);
        overfull.slots[1].soc_permille_end = 1001;
        assert_eq!(Signed::sign(overfull, &key).unwrap_err().reason, Reason::InvalidValue);
    }
}
