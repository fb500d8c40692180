//! The settlement rules of one slot, as a pure function from what was traded and metered to ledger
//! transactions, statements and totals. No I/O: `close` reads the inputs and writes the outputs.
//!
//! ## Money, and who gets the rounding remainder
//! Every `price × energy` is `PricePerKwh::value_of(energy, Rounding::Floor)` and every fee is rounded
//! down: **the payer keeps the fraction of a micro-unit**. The payer's debit and the payee's credit
//! are the same rounded integer, so no micro-unit is created or lost; the rounding only decides the
//! size of the payment.
//! - Trade: the buyer pays the seller `price × qty`.
//! - Grid fee: the buyer pays the zone's utility `grid_fee_per_kwh × qty` on every traded kWh.
//! - Protocol fee: **the buyer** pays the treasury `trade value × protocol_fee_bps / 10 000`.
//!   So buyers pay = sellers receive + grid fees + protocol fees, trade by trade.
//!
//! ## Imbalance
//! For each household: deviation = metered net export − traded net sales
//! (`export − import − (sold − bought)`). A negative deviation (shortfall: sold more than it
//! delivered, or used more than it bought) is bought from the utility at the retail price; a positive
//! one (surplus) is sold to the utility at the feed-in tariff. Hence, per slot,
//! Σ metered net export = Σ traded net sales (always 0) + utility absorbed − utility supplied.
//!
//! ## No data (conservative)
//! A household with a device that has no metered energy for the slot (see `metering`), or with trades
//! but no device in the zone, is flagged `no_data` and settled **as if it exported nothing and
//! imported exactly what it bought**: it is never credited for energy no meter confirmed (a seller
//! buys everything it sold back at retail and earns no tokens) and never charged for consumption no
//! meter confirmed beyond its own purchases.
//!
//! ## Gaps (energy settled late, conservatively)
//! When a household has data again for a slot S after "no data" slots, the energy its meters
//! recorded in the gap `[cursor, S.start)` is known exactly (`metering::gap_energy`) and is settled
//! in S's close by one transaction of kind `gap` ([`settle_gap`]): it is **charged**
//! `retail × gap import` and **credited** `feed-in × (gap export + energy it bought peer-to-peer in
//! the gap's slots)`, at the highest retail and lowest feed-in price in force during the gap; gap
//! energy earns no GRID. Rounding as above: each amount is rounded down (the payer keeps the
//! fraction).
//!
//! Why this never rewards withholding: a no-data slot charged `retail × sold` (P) and treated the
//! `bought` energy (B) as imported. For any true split of the gap's energy into per-slot imports I
//! and exports E, the on-time settlement of a slot would have paid `f(E − I + B − P)` (f = feed-in
//! for a surplus, retail for a shortfall). The late settlement pays
//! `feed-in × (E + B) − retail × (I + P)`, and since retail ≥ feed-in,
//! `feed-in × X − retail × Y ≤ f(X − Y)` for all X, Y ≥ 0: withholding never pays more (up to
//! the rounding of one amount instead of one per slot, under one micro-unit per slot). And the
//! energy is exact: over any period that ends with data, the energy billed at retail minus the
//! energy credited at feed-in is `metered import − bought − (metered export − sold)`.
//!
//! ## Rewards
//! Delivered peer-to-peer energy = min(sold, max(metered net export, 0)); the slot's reward pool is
//! shared in proportion to it (see `rewards`), minted from the `issuer` account.

use crate::rewards;
use protocol::tariff::SlotPrices;
use protocol::{AccountId, MicroMoney, MicroTokens, PricePerKwh, Rounding, SlotId, Statement, Wh, ZoneId};
use serde::Serialize;
use std::collections::BTreeMap;

/// The account that mints and burns GRID.
pub const ISSUER_ACCOUNT: &str = "issuer";
/// The account that receives protocol fees.
pub const TREASURY_ACCOUNT: &str = "treasury";
/// Basis points in one whole.
pub const BPS_PER_UNIT: i64 = 10_000;

/// Ledger assets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Asset {
    /// Settlement currency, micro-units.
    Money,
    /// GRID reward token, micro-tokens.
    Grid,
}

impl Asset {
    pub fn as_str(self) -> &'static str {
        match self {
            Asset::Money => "money",
            Asset::Grid => "grid",
        }
    }
}

/// What an entry is for (column `kind` of `ledger_entries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Purchase,
    Sale,
    GridFee,
    ProtocolFee,
    Imbalance,
    Reward,
    /// A line of a correction transaction (see [`crate::correction`]).
    Correction,
    /// Gap energy settled late (see [`settle_gap`]).
    Gap,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Purchase => "purchase",
            EntryKind::Sale => "sale",
            EntryKind::GridFee => "grid_fee",
            EntryKind::ProtocolFee => "protocol_fee",
            EntryKind::Imbalance => "imbalance",
            EntryKind::Reward => "reward",
            EntryKind::Correction => "correction",
            EntryKind::Gap => "gap",
        }
    }
}

/// Kind of a ledger transaction (column `kind` of `ledger_transactions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TxKind {
    Trade,
    Imbalance,
    Reward,
    /// A correction of a settled slot, posted by the operator (see [`crate::correction`]).
    Correction,
    /// A household's gap energy, settled in the close of the first slot with data (see [`settle_gap`]).
    Gap,
}

impl TxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TxKind::Trade => "trade",
            TxKind::Imbalance => "imbalance",
            TxKind::Reward => "reward",
            TxKind::Correction => "correction",
            TxKind::Gap => "gap",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryDraft {
    pub account: String,
    pub asset: Asset,
    pub kind: EntryKind,
    pub amount: i64,
}

/// A transaction before it has an id. Its entries sum to zero per asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxDraft {
    pub kind: TxKind,
    pub reference: String,
    pub entries: Vec<EntryDraft>,
}

impl TxDraft {
    fn new(kind: TxKind, reference: String) -> Self {
        Self { kind, reference, entries: Vec::new() }
    }
    /// Adds a movement of `amount` from `from` to `to`; nothing when it is zero.
    fn transfer(&mut self, asset: Asset, kind: EntryKind, from: &str, to: &str, amount: i64) {
        assert!(amount >= 0, "transfers are non-negative");
        if amount == 0 {
            return;
        }
        self.entries.push(EntryDraft { account: from.to_owned(), asset, kind, amount: -amount });
        self.entries.push(EntryDraft { account: to.to_owned(), asset, kind, amount });
    }
    /// Sum per asset (money, grid).
    pub fn sums(&self) -> (i128, i128) {
        self.entries.iter().fold((0, 0), |(money, grid), entry| match entry.asset {
            Asset::Money => (money + i128::from(entry.amount), grid),
            Asset::Grid => (money, grid + i128::from(entry.amount)),
        })
    }
}

/// The prices a slot settles at: its tariff version's fee and the time-of-use band covering the slot's
/// start, else the version's flat prices (tables `tariffs`, `tariff_bands`; `protocol::tariff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tariff {
    pub effective_from_ms: i64,
    pub retail_price_per_kwh: PricePerKwh,
    pub feed_in_price_per_kwh: PricePerKwh,
    pub grid_fee_per_kwh: PricePerKwh,
    pub protocol_fee_bps: i64,
}

impl From<protocol::tariff::SlotTariff> for Tariff {
    /// The prices one slot settles at: its band's (or the flat ones) and its version's fee.
    fn from(slot: protocol::tariff::SlotTariff) -> Tariff {
        Tariff {
            effective_from_ms: slot.effective_from_ms,
            retail_price_per_kwh: slot.prices.retail_price_per_kwh,
            feed_in_price_per_kwh: slot.prices.feed_in_price_per_kwh,
            grid_fee_per_kwh: slot.prices.grid_fee_per_kwh,
            protocol_fee_bps: slot.protocol_fee_bps,
        }
    }
}

/// A trade as settlement needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeInput {
    pub trade_id: i64,
    pub price_per_kwh: PricePerKwh,
    pub qty_wh: Wh,
    pub buyer: AccountId,
    pub seller: AccountId,
}

/// A household's metered energy in the slot, summed over its devices in the zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountMeter {
    pub import_wh: i64,
    pub export_wh: i64,
    /// A device had no data: the conservative rule applies.
    pub no_data: bool,
}

#[derive(Debug, Clone)]
pub struct SlotInput {
    pub zone: ZoneId,
    pub slot: SlotId,
    pub tariff: Tariff,
    pub utility_account: String,
    /// Trades of the slot, in trade id order.
    pub trades: Vec<TradeInput>,
    /// Households with a device in the zone.
    pub meters: BTreeMap<AccountId, AccountMeter>,
    /// GRID to share among this slot's sellers (budget + carry, capped).
    pub reward_pool: i64,
}

/// Totals of a settled slot over its household statements.
// Stored in table `settlement_slots` (`close::TotalsColumns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
// The JSON has these fields only: `additionalProperties: false` in the OpenAPI document.
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct SlotTotals {
    pub statements: i64,
    pub trades: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub traded_wh: Wh,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub traded_value: MicroMoney,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub delivered_p2p_wh: Wh,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub metered_import_wh: Wh,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub metered_export_wh: Wh,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub utility_supplied_wh: Wh,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub utility_absorbed_wh: Wh,
    /// Paid by households to the utility for shortfalls.
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub utility_supplied_value: MicroMoney,
    /// Paid by the utility to households for surpluses.
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub utility_absorbed_value: MicroMoney,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub grid_fees: MicroMoney,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub protocol_fees: MicroMoney,
    /// What households would have paid buying every imported kWh at retail and selling every exported
    /// kWh at feed-in, minus what they paid; negative if trading cost them more.
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub household_savings: MicroMoney,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub tokens_emitted: MicroTokens,
    #[cfg_attr(feature = "openapi", schema(value_type = i64))]
    pub tokens_carry: MicroTokens,
    pub no_data_accounts: i64,
}

#[derive(Debug, Clone)]
pub struct SlotSettlement {
    pub transactions: Vec<TxDraft>,
    /// One per household, ordered by account id (the Merkle leaf order).
    pub statements: Vec<Statement>,
    pub totals: SlotTotals,
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    bought_wh: i64,
    sold_wh: i64,
    purchases: i64,
    sales: i64,
    grid_fees: i64,
    protocol_fees: i64,
}

/// `value × bps / 10 000`, rounded down.
pub fn protocol_fee(value: MicroMoney, bps: i64) -> MicroMoney {
    let fee = i128::from(value.0) * i128::from(bps) / i128::from(BPS_PER_UNIT);
    MicroMoney(i64::try_from(fee).unwrap_or(i64::MAX))
}

/// Settles one slot. Panics only on a broken invariant (a transaction that does not balance).
pub fn settle(input: &SlotInput) -> SlotSettlement {
    let tariff = &input.tariff;
    let utility = input.utility_account.as_str();
    let mut tallies: BTreeMap<AccountId, Tally> =
        input.meters.keys().map(|account| (*account, Tally::default())).collect();
    let mut transactions = Vec::with_capacity(input.trades.len() + input.meters.len() + 1);
    let mut totals = SlotTotals::default();

    for trade in &input.trades {
        let value = trade.price_per_kwh.value_of(trade.qty_wh, Rounding::Floor);
        let grid_fee = tariff.grid_fee_per_kwh.value_of(trade.qty_wh, Rounding::Floor);
        let fee = protocol_fee(value, tariff.protocol_fee_bps);
        let (buyer, seller) = (trade.buyer.to_hex(), trade.seller.to_hex());
        let mut tx = TxDraft::new(TxKind::Trade, trade.trade_id.to_string());
        tx.transfer(Asset::Money, EntryKind::Purchase, &buyer, &seller, value.0);
        tx.transfer(Asset::Money, EntryKind::GridFee, &buyer, utility, grid_fee.0);
        tx.transfer(Asset::Money, EntryKind::ProtocolFee, &buyer, TREASURY_ACCOUNT, fee.0);
        transactions.push(tx);

        let buyer_tally = tallies.entry(trade.buyer).or_default();
        buyer_tally.bought_wh += trade.qty_wh.0;
        buyer_tally.purchases += value.0;
        buyer_tally.grid_fees += grid_fee.0;
        buyer_tally.protocol_fees += fee.0;
        let seller_tally = tallies.entry(trade.seller).or_default();
        seller_tally.sold_wh += trade.qty_wh.0;
        seller_tally.sales += value.0;

        totals.trades += 1;
        totals.traded_wh += trade.qty_wh;
        totals.traded_value += value;
        totals.grid_fees += grid_fee;
        totals.protocol_fees += fee;
    }

    // Imbalance, metered figures and delivered energy per household (account id order).
    struct Line {
        account: AccountId,
        tally: Tally,
        meter: AccountMeter,
        imbalance_wh: i64,
        utility_net: i64,
        delivered_wh: i64,
    }
    let mut lines = Vec::with_capacity(tallies.len());
    for (account, tally) in tallies {
        let measured =
            input.meters.get(&account).copied().unwrap_or(AccountMeter { no_data: true, ..Default::default() });
        let meter = if measured.no_data {
            AccountMeter { import_wh: tally.bought_wh, export_wh: 0, no_data: true }
        } else {
            measured
        };
        let net_export = meter.export_wh - meter.import_wh;
        let net_sales = tally.sold_wh - tally.bought_wh;
        let imbalance_wh = net_export - net_sales;
        let account_hex = account.to_hex();
        let mut tx = TxDraft::new(TxKind::Imbalance, account_hex.clone());
        let utility_net = if imbalance_wh < 0 {
            let cost = tariff.retail_price_per_kwh.value_of(Wh(-imbalance_wh), Rounding::Floor).0;
            tx.transfer(Asset::Money, EntryKind::Imbalance, &account_hex, utility, cost);
            totals.utility_supplied_wh += Wh(-imbalance_wh);
            totals.utility_supplied_value += MicroMoney(cost);
            -cost
        } else {
            let proceeds = tariff.feed_in_price_per_kwh.value_of(Wh(imbalance_wh), Rounding::Floor).0;
            tx.transfer(Asset::Money, EntryKind::Imbalance, utility, &account_hex, proceeds);
            totals.utility_absorbed_wh += Wh(imbalance_wh);
            totals.utility_absorbed_value += MicroMoney(proceeds);
            proceeds
        };
        if !tx.entries.is_empty() {
            transactions.push(tx);
        }
        let delivered_wh = tally.sold_wh.min(net_export.max(0));
        totals.delivered_p2p_wh += Wh(delivered_wh);
        totals.metered_import_wh += Wh(meter.import_wh);
        totals.metered_export_wh += Wh(meter.export_wh);
        totals.no_data_accounts += i64::from(meter.no_data);
        lines.push(Line { account, tally, meter, imbalance_wh, utility_net, delivered_wh });
    }

    // Rewards: one minting transaction for the slot.
    let delivered: Vec<i64> = lines.iter().map(|line| line.delivered_wh).collect();
    let (tokens, carry) = rewards::share(input.reward_pool, &delivered);
    let mut reward_tx = TxDraft::new(TxKind::Reward, format!("{}/{}", input.zone, input.slot));
    for (line, &earned) in lines.iter().zip(&tokens) {
        reward_tx.transfer(Asset::Grid, EntryKind::Reward, ISSUER_ACCOUNT, &line.account.to_hex(), earned);
    }
    totals.tokens_emitted = MicroTokens(tokens.iter().sum());
    totals.tokens_carry = MicroTokens(carry);
    if !reward_tx.entries.is_empty() {
        transactions.push(reward_tx);
    }

    let mut statements = Vec::with_capacity(lines.len());
    for (line, earned) in lines.iter().zip(tokens) {
        let tally = line.tally;
        let net = tally.sales - tally.purchases - tally.grid_fees - tally.protocol_fees + line.utility_net;
        let all_retail_cost = tariff.retail_price_per_kwh.value_of(Wh(line.meter.import_wh), Rounding::Floor).0
            - tariff.feed_in_price_per_kwh.value_of(Wh(line.meter.export_wh), Rounding::Floor).0;
        totals.household_savings += MicroMoney(all_retail_cost + net);
        statements.push(Statement {
            zone: input.zone.clone(),
            slot: input.slot,
            account: line.account,
            metered_import_wh: Wh(line.meter.import_wh),
            metered_export_wh: Wh(line.meter.export_wh),
            bought_wh: Wh(tally.bought_wh),
            sold_wh: Wh(tally.sold_wh),
            imbalance_wh: Wh(line.imbalance_wh),
            purchases: MicroMoney(-tally.purchases),
            sales: MicroMoney(tally.sales),
            grid_fees: MicroMoney(-tally.grid_fees),
            protocol_fees: MicroMoney(-tally.protocol_fees),
            utility_net: MicroMoney(line.utility_net),
            net: MicroMoney(net),
            tokens_earned: MicroTokens(earned),
            no_data: line.meter.no_data,
        });
    }
    totals.statements = statements.len() as i64;

    for tx in &transactions {
        assert_eq!(tx.sums(), (0, 0), "every transaction balances per asset: {tx:?}");
    }
    let net_export: i64 = lines.iter().map(|line| line.meter.export_wh - line.meter.import_wh).sum();
    assert_eq!(
        net_export,
        (totals.utility_absorbed_wh - totals.utility_supplied_wh).0,
        "energy balances: metered = traded (0 net) + absorbed − supplied"
    );
    SlotSettlement { transactions, statements, totals }
}

/// A household's gap, summed over its devices: `[gap_start_ms, slot start)` was settled as no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapInput {
    pub account: AccountId,
    pub gap_start_ms: i64,
    pub import_wh: i64,
    /// Credited gap export (zero when a device's counters were inconsistent, see `close`).
    pub export_wh: i64,
    /// Bought peer-to-peer in the gap's slots (all of them were settled as no data).
    pub bought_wh: i64,
    /// Highest retail price in force during the gap.
    pub retail_price_per_kwh: PricePerKwh,
    /// Lowest feed-in price in force during the gap.
    pub feed_in_price_per_kwh: PricePerKwh,
}

/// The transaction of one household's gap and its two amounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapSettlement {
    pub input: GapInput,
    /// Paid by the household to the utility: `retail × import`, rounded down.
    pub charged: i64,
    /// Paid by the utility to the household: `feed-in × (export + bought)`, rounded down.
    pub credited: i64,
    pub tx: TxDraft,
}

/// The prices a gap is settled at: the highest retail and the lowest feed-in of `prices` (those of
/// the gap's slots, time-of-use bands included); `None` when there is none.
pub fn gap_prices(prices: &[SlotPrices]) -> Option<(PricePerKwh, PricePerKwh)> {
    let retail = prices.iter().map(|slot| slot.retail_price_per_kwh).max()?;
    let feed_in = prices.iter().map(|slot| slot.feed_in_price_per_kwh).min()?;
    Some((retail, feed_in))
}

/// Settles one household's gap in the close of `slot` (see the module docs, "Gaps"). The reference
/// names the account and the gap: `<account>/<gap start ms>-<slot start ms>`.
pub fn settle_gap(input: &GapInput, slot: SlotId, utility: &str) -> GapSettlement {
    assert!(input.import_wh >= 0 && input.export_wh >= 0 && input.bought_wh >= 0, "gap energy is non-negative");
    assert!(input.gap_start_ms < slot.start_ms(), "a gap ends where the slot starts");
    let account = input.account.to_hex();
    let charged = input.retail_price_per_kwh.value_of(Wh(input.import_wh), Rounding::Floor).0;
    let credited =
        input.feed_in_price_per_kwh.value_of(Wh(input.export_wh.saturating_add(input.bought_wh)), Rounding::Floor).0;
    let mut tx = TxDraft::new(TxKind::Gap, format!("{account}/{}-{}", input.gap_start_ms, slot.start_ms()));
    tx.transfer(Asset::Money, EntryKind::Gap, &account, utility, charged);
    tx.transfer(Asset::Money, EntryKind::Gap, utility, &account, credited);
    assert_eq!(tx.sums(), (0, 0), "a gap transaction balances");
    GapSettlement { input: *input, charged, credited, tx }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::testing::signing_key;

    fn account(seed: u8) -> AccountId {
        AccountId::from_verifying_key(&signing_key(seed).verifying_key())
    }

    fn input(trades: Vec<TradeInput>, meters: Vec<(AccountId, AccountMeter)>) -> SlotInput {
        SlotInput {
            zone: ZoneId::parse("z").expect("valid"),
            slot: SlotId::new(900_000).expect("valid"),
            tariff: Tariff {
                effective_from_ms: 0,
                retail_price_per_kwh: PricePerKwh(300_000),
                feed_in_price_per_kwh: PricePerKwh(80_000),
                grid_fee_per_kwh: PricePerKwh(20_000),
                protocol_fee_bps: 50,
            },
            utility_account: "utility:z".to_owned(),
            trades,
            meters: meters.into_iter().collect(),
            reward_pool: 1_000,
        }
    }

    fn meter(import_wh: i64, export_wh: i64) -> AccountMeter {
        AccountMeter { import_wh, export_wh, no_data: false }
    }

    #[test]
    fn a_matched_sale_settles_with_no_imbalance() {
        let (seller, buyer) = (account(1), account(2));
        let trade = TradeInput { trade_id: 1, price_per_kwh: PricePerKwh(200_000), qty_wh: Wh(1_000), buyer, seller };
        let result = settle(&input(vec![trade], vec![(seller, meter(0, 1_000)), (buyer, meter(1_000, 0))]));
        let by_account: BTreeMap<_, _> = result.statements.iter().map(|s| (s.account, s)).collect();
        assert_eq!(by_account[&seller].sales, MicroMoney(200_000));
        assert_eq!(by_account[&buyer].purchases, MicroMoney(-200_000));
        assert_eq!(by_account[&buyer].grid_fees, MicroMoney(-20_000));
        assert_eq!(by_account[&buyer].protocol_fees, MicroMoney(-1_000));
        assert_eq!(by_account[&buyer].net, MicroMoney(-221_000));
        assert_eq!(by_account[&seller].imbalance_wh, Wh(0));
        assert_eq!(by_account[&seller].tokens_earned, MicroTokens(1_000));
        assert_eq!(result.totals.tokens_carry, MicroTokens(0));
    }

    fn gap(import_wh: i64, export_wh: i64, bought_wh: i64) -> GapInput {
        GapInput {
            account: account(1),
            gap_start_ms: 900_000,
            import_wh,
            export_wh,
            bought_wh,
            retail_price_per_kwh: PricePerKwh(300_000),
            feed_in_price_per_kwh: PricePerKwh(80_000),
        }
    }

    #[test]
    fn gap_import_is_charged_at_retail_and_export_plus_bought_credited_at_feed_in() {
        let slot = SlotId::new(3_600_000).expect("valid");
        let settled = settle_gap(&gap(250, 10, 5), slot, "utility:z");
        assert_eq!(settled.charged, 75_000, "250 Wh at 300 000 µ/kWh");
        assert_eq!(settled.credited, 1_200, "15 Wh at 80 000 µ/kWh");
        assert_eq!(settled.tx.kind, TxKind::Gap);
        assert_eq!(settled.tx.reference, format!("{}/900000-3600000", account(1).to_hex()));
        let household: i64 = settled
            .tx
            .entries
            .iter()
            .filter(|entry| entry.account == account(1).to_hex())
            .map(|entry| entry.amount)
            .sum();
        assert_eq!(household, -75_000 + 1_200);
    }

    #[test]
    fn gap_amounts_are_rounded_down_and_zero_amounts_write_no_lines() {
        let slot = SlotId::new(3_600_000).expect("valid");
        let mut input = gap(1, 0, 0);
        input.retail_price_per_kwh = PricePerKwh(333_333);
        let settled = settle_gap(&input, slot, "utility:z");
        assert_eq!(settled.charged, 333, "333.333 rounded down");
        assert_eq!(settled.credited, 0);
        assert_eq!(settled.tx.entries.len(), 2, "no credit lines");
    }

    #[test]
    fn a_gap_across_tariffs_and_bands_uses_the_highest_retail_and_the_lowest_feed_in() {
        let tariff = |retail, feed_in| SlotPrices {
            retail_price_per_kwh: PricePerKwh(retail),
            feed_in_price_per_kwh: PricePerKwh(feed_in),
            grid_fee_per_kwh: PricePerKwh(0),
        };
        let prices = gap_prices(&[tariff(300_000, 90_000), tariff(250_000, 70_000), tariff(280_000, 95_000)]);
        assert_eq!(prices, Some((PricePerKwh(300_000), PricePerKwh(70_000))));
        assert_eq!(gap_prices(&[]), None);
    }
}
