//! Corrections: the only way to change what the ledger says about a settled slot.
//!
//! Entries are append-only, so a mistake (a tariff entered wrongly, a meter found faulty after the
//! fact, a goodwill credit) is corrected by a new transaction of kind `correction` that refers to the
//! settled slot and carries a human-readable reference (a ticket or a reason). Its lines obey the
//! same rule as every other transaction: they sum to zero per asset, so every asset still sums to zero
//! over all accounts. The slot's statements and signed Merkle root are never rewritten: the correction
//! shows in balances and in the ledger, next to the statement it corrects.

use crate::close::{ledger_head_lock, sum_amount};
use crate::rules::{Asset, EntryKind, TxKind};
use crate::{registry, SettlementError};
use diesel::prelude::*;
use gridex_store::schema::{ledger_entries, ledger_transactions, settlement_slots};
use gridex_store::DbConnection;
use protocol::{SlotId, ZoneId};

/// Most lines in one correction.
pub const CORRECTION_LINES_MAX: usize = 64;
/// Longest reference text, in bytes.
pub const REFERENCE_BYTES_MAX: usize = 200;

/// A correction to post: lines that sum to zero per asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correction {
    pub zone: ZoneId,
    /// The settled slot it corrects.
    pub slot: SlotId,
    /// Why: a ticket number or a sentence; shown with the transaction.
    pub reference: String,
    pub lines: Vec<CorrectionLine>,
}

/// One line: `amount` (micro-units of `asset`, non-zero) to `account`; positive credits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrectionLine {
    pub account: String,
    pub asset: Asset,
    pub amount: i64,
}

/// Why a correction was refused; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorrectionError {
    #[error("a correction has 2 to {CORRECTION_LINES_MAX} lines, not {0}")]
    LineCount(usize),
    #[error("line {0} has amount 0")]
    ZeroAmount(usize),
    #[error("the {asset} lines sum to {sum}, not 0")]
    Unbalanced { asset: &'static str, sum: i128 },
    #[error("the reference must be 1 to {REFERENCE_BYTES_MAX} bytes of text")]
    Reference,
    #[error("unknown account `{0}`")]
    UnknownAccount(String),
    #[error("slot {slot_ms} of zone `{zone}` is not settled; only settled slots are corrected")]
    NotSettled { zone: String, slot_ms: i64 },
}

/// Checks what can be checked without the database.
pub fn validate(correction: &Correction) -> Result<(), CorrectionError> {
    let lines = &correction.lines;
    if !(2..=CORRECTION_LINES_MAX).contains(&lines.len()) {
        return Err(CorrectionError::LineCount(lines.len()));
    }
    let reference = correction.reference.trim();
    if reference.is_empty() || correction.reference.len() > REFERENCE_BYTES_MAX {
        return Err(CorrectionError::Reference);
    }
    if let Some(index) = lines.iter().position(|line| line.amount == 0) {
        return Err(CorrectionError::ZeroAmount(index));
    }
    for asset in [Asset::Money, Asset::Grid] {
        let sum: i128 = lines.iter().filter(|line| line.asset == asset).map(|line| i128::from(line.amount)).sum();
        if sum != 0 {
            return Err(CorrectionError::Unbalanced { asset: asset.as_str(), sum });
        }
    }
    Ok(())
}

/// Posts `correction` as one new ledger transaction and returns its id. All or nothing: a refused
/// correction writes nothing.
pub fn post_correction(conn: &mut DbConnection, correction: &Correction, now_ms: i64) -> Result<i64, SettlementError> {
    validate(correction)?;
    conn.transaction(|conn| {
        let tx_id = ledger_head_lock(conn)?;
        let settled: i64 = settlement_slots::table
            .filter(settlement_slots::zone_id.eq(correction.zone.as_str()))
            .filter(settlement_slots::slot_start_ms.eq(correction.slot.start_ms()))
            .count()
            .get_result(conn)?;
        if settled == 0 {
            return Err(CorrectionError::NotSettled {
                zone: correction.zone.to_string(),
                slot_ms: correction.slot.start_ms(),
            }
            .into());
        }
        for line in &correction.lines {
            if registry::account(conn, &line.account)?.is_none() {
                return Err(CorrectionError::UnknownAccount(line.account.clone()).into());
            }
        }
        diesel::insert_into(ledger_transactions::table)
            .values((
                ledger_transactions::tx_id.eq(tx_id),
                ledger_transactions::zone_id.eq(correction.zone.as_str()),
                ledger_transactions::slot_start_ms.eq(correction.slot.start_ms()),
                ledger_transactions::kind.eq(TxKind::Correction.as_str()),
                ledger_transactions::reference.eq(correction.reference.trim()),
                ledger_transactions::created_ms.eq(now_ms),
            ))
            .execute(conn)?;
        for (line_no, line) in correction.lines.iter().enumerate() {
            diesel::insert_into(ledger_entries::table)
                .values((
                    ledger_entries::tx_id.eq(tx_id),
                    ledger_entries::line.eq(line_no as i64),
                    ledger_entries::account_id.eq(&line.account),
                    ledger_entries::asset.eq(line.asset.as_str()),
                    ledger_entries::kind.eq(EntryKind::Correction.as_str()),
                    ledger_entries::amount.eq(line.amount),
                ))
                .execute(conn)?;
        }
        crate::close::ledger_head_advance(conn, tx_id + 1)?;
        // The invariant, checked where it is cheap: this transaction's entries sum to zero per asset.
        let sums: Vec<(String, i64)> = ledger_entries::table
            .filter(ledger_entries::tx_id.eq(tx_id))
            .group_by(ledger_entries::asset)
            .select((ledger_entries::asset, sum_amount()))
            .load(conn)?;
        if sums.iter().any(|(_, sum)| *sum != 0) {
            return Err(SettlementError::InvalidData(format!("correction {tx_id} does not balance: {sums:?}")));
        }
        Ok(tx_id)
    })
}
