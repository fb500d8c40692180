//! The exchange's writes of `battery_plans` (PROTOCOL.md §4.7): the latest signed plan of each
//! account, replaced only by one with a higher nonce. Blocking; call through `Database::write`.

use crate::ingest::{PlanContext, ZoneInfo};
use diesel::prelude::*;
use gridex_store::schema::{accounts, battery_plans, zones};
use gridex_store::{DbConnection, DbError};
use protocol::{BatteryPlan, Signed, ZoneId};

/// What storing a plan did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanStored {
    /// It is the account's latest plan now.
    Stored,
    /// The very plan stored already (a resend): nothing changed.
    Same,
    /// The account's stored plan has this nonce, at least the new one's: refused as `replayed`.
    Replayed { stored_nonce: u64 },
}

/// The registry's answer for a plan: its zone and its account's registration.
pub fn plan_context(conn: &mut DbConnection, plan: &BatteryPlan) -> Result<PlanContext, DbError> {
    let zone: Option<i64> =
        zones::table.filter(zones::zone_id.eq(plan.zone.as_str())).select(zones::slot_len_ms).first(conn).optional()?;
    let account: Option<Option<String>> = accounts::table
        .filter(accounts::account_id.eq(plan.account.to_hex()))
        .select(accounts::zone_id)
        .first(conn)
        .optional()?;
    Ok(PlanContext {
        zone: zone.map(|slot_len_ms| ZoneInfo { slot_len_ms }),
        // A registered zone that does not parse is no zone of this exchange's.
        account_zone: account.map(|zone| zone.and_then(|zone| ZoneId::parse(&zone).ok())),
    })
}

/// Stores `signed` as its account's latest plan unless the stored one's nonce is at least its own.
/// Call inside a write transaction (`Database::write`): the read and the write are one step.
pub fn store_plan(
    conn: &mut DbConnection,
    signed: &Signed<BatteryPlan>,
    payload: &str,
    received_ms: i64,
) -> Result<PlanStored, DbError> {
    let plan = &signed.message;
    let account = plan.account.to_hex();
    let stored: Option<(i64, String)> = battery_plans::table
        .filter(battery_plans::account_id.eq(&account))
        .select((battery_plans::nonce, battery_plans::payload))
        .first(conn)
        .optional()?;
    let nonce = i64::try_from(plan.nonce).map_err(|_| DbError::Invalid("a nonce beyond 2^63".to_owned()))?;
    if let Some((stored_nonce, stored_payload)) = stored {
        if stored_nonce >= nonce {
            let same = Signed::<BatteryPlan>::parse(stored_payload.as_bytes())
                .is_ok_and(|stored| stored.signing_bytes() == signed.signing_bytes());
            if same {
                return Ok(PlanStored::Same);
            }
            let stored_nonce = u64::try_from(stored_nonce).unwrap_or(0);
            return Ok(PlanStored::Replayed { stored_nonce });
        }
        diesel::delete(battery_plans::table.filter(battery_plans::account_id.eq(&account))).execute(conn)?;
    }
    diesel::insert_into(battery_plans::table)
        .values((
            battery_plans::account_id.eq(&account),
            battery_plans::zone_id.eq(plan.zone.as_str()),
            battery_plans::nonce.eq(nonce),
            battery_plans::ts_ms.eq(plan.ts_ms.0),
            battery_plans::first_slot_ms.eq(plan.first_slot().map(|slot| slot.start().0)),
            battery_plans::last_slot_ms.eq(plan.last_slot().map(|slot| slot.start().0)),
            battery_plans::payload.eq(payload),
            battery_plans::received_ms.eq(received_ms),
        ))
        .execute(conn)?;
    Ok(PlanStored::Stored)
}
