//! `gridex demo --homes N --days D --report DIR`: the weekly market report. Simulates the demo's
//! community (fixed seeds, faster than real time; see [`sim`]) once per variant — today's agent and
//! the new (quoting) agent, each without and with the closing auction, and both with batteries in half
//! of the solar homes — and writes per variant the
//! self-sufficiency, the share of exported energy sold peer to peer, households' savings against the
//! utility alone, sellers' earnings over feed-in, the average and spread of prices and the GRID
//! emitted, the batteries' stored and returned energy and losses, with SVG charts and a `report.md`
//! that shows them. Every variant's figures are checked for consistency (energy and money balance,
//! each home's exact energy balance in mWh, limits and caps) before anything is written.

mod charts;
pub mod sim;

use anyhow::Context as _;
use sim::{Outcome, Variant, VARIANTS};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Homes and days the report accepts at most: a larger run belongs in a load tool.
pub const HOMES_MAX: usize = 1_000;
pub const DAYS_MAX: i64 = 31;

/// What `--report` was asked for.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub homes: usize,
    pub days: i64,
    pub dir: PathBuf,
}

/// The figures of one variant, derived from its [`Outcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub variant: &'static str,
    /// Share of the homes' load not bought from the utility (per mille).
    pub self_sufficiency_per_mille: i64,
    /// Share of metered export delivered peer to peer (per mille).
    pub p2p_export_share_per_mille: i64,
    /// Households' money against the utility alone (import at retail, export at feed-in) without a
    /// battery, micro-units: what the market and the batteries together bring.
    pub household_savings: i64,
    /// The market's part: against the utility alone for the same metered flows (the battery
    /// included, as it ran), see `Household::utility_only_net`.
    pub market_savings: i64,
    /// The worst single household against the utility alone.
    pub worst_household_savings: i64,
    /// What sellers earned above feed-in for the energy they sold, micro-units.
    pub sellers_over_feed_in: i64,
    pub traded_wh: i64,
    /// Delivered peer to peer, and the most that could have been (see `Outcome::p2p_potential_wh`).
    pub delivered_p2p_wh: i64,
    pub p2p_potential_wh: i64,
    /// Volume-weighted mean and standard deviation of trade prices (µ per kWh).
    pub price_mean_per_kwh: i64,
    pub price_spread_per_kwh: i64,
    pub tokens_emitted: i64,
    pub trades: i64,
    /// Volume of this variant's own orders through the closing auction and through continuous trading.
    pub same_orders_auction_wh: i64,
    pub same_orders_continuous_wh: i64,
    /// Homes with a battery, and the batteries' AC energy in (stored) and out (returned), and losses.
    pub batteries: i64,
    pub battery_charged_wh: i64,
    pub battery_discharged_wh: i64,
    pub battery_losses_wh: i64,
}

/// A failed consistency check: the report is not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variant}: {check}")]
pub struct Inconsistency {
    pub variant: &'static str,
    pub check: String,
}

fn per_mille(part: i64, whole: i64) -> i64 {
    if whole <= 0 {
        return 0;
    }
    i64::try_from(i128::from(part) * 1000 / i128::from(whole)).unwrap_or(0)
}

/// Volume-weighted mean and standard deviation of `(price, qty)` pairs.
fn price_stats(trades: &[(i64, i64)]) -> (i64, i64) {
    let volume: i128 = trades.iter().map(|(_, qty)| i128::from(*qty)).sum();
    if volume == 0 {
        return (0, 0);
    }
    let mean = trades.iter().map(|(price, qty)| i128::from(*price) * i128::from(*qty)).sum::<i128>() / volume;
    let variance =
        trades.iter().map(|(price, qty)| (i128::from(*price) - mean).pow(2) * i128::from(*qty)).sum::<i128>() / volume;
    (i64::try_from(mean).unwrap_or(0), i64::try_from(variance.isqrt()).unwrap_or(0))
}

impl Summary {
    pub fn of(variant: Variant, outcome: &Outcome) -> Summary {
        let (price_mean_per_kwh, price_spread_per_kwh) = price_stats(&outcome.trade_prices);
        let savings = |h: &sim::Household| h.net - h.no_battery_utility_net;
        Summary {
            variant: variant.name,
            self_sufficiency_per_mille: 1000 - per_mille(outcome.utility_supplied_wh, outcome.load_wh),
            p2p_export_share_per_mille: per_mille(outcome.delivered_p2p_wh, outcome.metered_export_wh),
            household_savings: outcome.households.iter().map(savings).sum(),
            market_savings: outcome.households.iter().map(|h| h.net - h.utility_only_net).sum(),
            worst_household_savings: outcome.households.iter().map(savings).min().unwrap_or(0),
            sellers_over_feed_in: outcome.households.iter().map(|h| h.sales_over_feed_in).sum(),
            traded_wh: outcome.traded_wh,
            delivered_p2p_wh: outcome.delivered_p2p_wh,
            p2p_potential_wh: outcome.p2p_potential_wh,
            price_mean_per_kwh,
            price_spread_per_kwh,
            tokens_emitted: outcome.tokens_emitted,
            trades: outcome.trades,
            same_orders_auction_wh: outcome.same_orders_auction_wh,
            same_orders_continuous_wh: outcome.same_orders_continuous_wh,
            batteries: outcome.households.iter().filter(|h| h.has_battery).count() as i64,
            battery_charged_wh: outcome.households.iter().map(|h| h.energy.charged_mwh).sum::<i64>() / 1000,
            battery_discharged_wh: outcome.households.iter().map(|h| h.energy.discharged_mwh).sum::<i64>() / 1000,
            battery_losses_wh: outcome.households.iter().map(|h| h.energy.losses_mwh).sum::<i64>() / 1000,
        }
    }
}

/// Energy and money balance of a variant, its limits and (for the new agent) its caps.
pub fn check(variant: Variant, outcome: &Outcome) -> Result<(), Inconsistency> {
    let fail = |check: String| Err(Inconsistency { variant: variant.name, check });
    for household in &outcome.households {
        check_home(household).map_err(|check| Inconsistency { variant: variant.name, check })?;
    }
    let bought: i64 = outcome.households.iter().map(|h| h.bought_wh).sum();
    let sold: i64 = outcome.households.iter().map(|h| h.sold_wh).sum();
    if bought != sold || bought != outcome.traded_wh {
        return fail(format!("energy: bought {bought} Wh, sold {sold} Wh, traded {} Wh", outcome.traded_wh));
    }
    let net_export = outcome.metered_export_wh - outcome.metered_import_wh;
    if net_export != outcome.utility_absorbed_wh - outcome.utility_supplied_wh {
        return fail(format!(
            "energy: metered net export {net_export} Wh but the utility absorbed {} Wh and supplied {} Wh",
            outcome.utility_absorbed_wh, outcome.utility_supplied_wh
        ));
    }
    if outcome.unbalanced_transactions != 0 {
        return fail(format!("money: {} ledger transactions do not sum to zero", outcome.unbalanced_transactions));
    }
    if outcome.purchases != outcome.sales {
        return fail(format!("money: buyers paid {} for trades but sellers got {}", outcome.purchases, outcome.sales));
    }
    let household_net: i64 = outcome.households.iter().map(|h| h.net).sum();
    let utility_net = outcome.utility_absorbed_value - outcome.utility_supplied_value;
    if household_net != utility_net - outcome.grid_fees - outcome.protocol_fees {
        return fail(format!(
            "money: households netted {household_net}, the utility paid them {utility_net} and took {} in grid \
             fees, the treasury {}",
            outcome.grid_fees, outcome.protocol_fees
        ));
    }
    if outcome.sales != outcome.traded_value {
        return fail(format!("money: sales {} but trade value {}", outcome.sales, outcome.traded_value));
    }
    if outcome.limit_violations != 0 {
        return fail(format!("{} trades beyond an owner's price limit", outcome.limit_violations));
    }
    if variant.quoting {
        for household in &outcome.households {
            if household.slot_traded_wh_max > sim::CAP_QTY_WH_PER_SLOT
                || household.day_traded_wh_max > sim::CAP_QTY_WH_PER_DAY
                || household.day_spend_max > sim::CAP_SPEND_PER_DAY
            {
                return fail(format!("a household exceeded its caps: {household:?}"));
            }
        }
    }
    Ok(())
}

/// One home's physics, exact to the mWh: `pv + import = load + export + storage change + losses`,
/// the battery's own balance (`charged − discharged = storage change + losses`), and the meter's
/// settled Wh are its mWh counters truncated (less than a Wh apart).
fn check_home(household: &sim::Household) -> Result<(), String> {
    let e = household.energy;
    let sources = e.pv_mwh + e.import_mwh;
    let uses = e.load_mwh + e.export_mwh + e.stored_change_mwh + e.losses_mwh;
    if sources != uses {
        return Err(format!(
            "energy: household {} has pv + import = {sources} mWh but load + export + storage change + losses = \
             {uses} mWh: {e:?}",
            household.account
        ));
    }
    if e.charged_mwh - e.discharged_mwh != e.stored_change_mwh + e.losses_mwh {
        return Err(format!("energy: household {}'s battery does not balance: {e:?}", household.account));
    }
    let within_a_wh = |wh: i64, mwh: i64| (wh * 1000 - mwh).abs() < 1000;
    if !within_a_wh(household.metered_import_wh, e.import_mwh)
        || !within_a_wh(household.metered_export_wh, e.export_mwh)
    {
        return Err(format!(
            "energy: household {} settled {} Wh import and {} Wh export but its meter counted {e:?}",
            household.account, household.metered_import_wh, household.metered_export_wh
        ));
    }
    Ok(())
}

/// Runs every variant, checks them and writes the report into `options.dir`.
pub fn run(options: &ReportOptions) -> anyhow::Result<Vec<Summary>> {
    anyhow::ensure!((1..=HOMES_MAX).contains(&options.homes), "--homes must be 1 to {HOMES_MAX}");
    anyhow::ensure!((1..=DAYS_MAX).contains(&options.days), "--days must be 1 to {DAYS_MAX}");
    let mut outcomes = Vec::new();
    for variant in VARIANTS {
        let outcome = sim::simulate(options.homes, options.days, variant);
        check(variant, &outcome)?;
        outcomes.push((variant, outcome));
    }
    let summaries: Vec<Summary> = outcomes.iter().map(|(variant, outcome)| Summary::of(*variant, outcome)).collect();
    std::fs::create_dir_all(&options.dir).with_context(|| format!("cannot create {}", options.dir.display()))?;
    charts::write_all(&options.dir, &summaries, &outcomes)?;
    let markdown = markdown(options, &summaries);
    write(&options.dir.join("report.md"), &markdown)?;
    Ok(summaries)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Micro-units as euros with two decimals.
pub fn euros(micro: i64) -> String {
    let cents = micro / 10_000;
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}€{}.{:02}", cents.abs() / 100, cents.abs() % 100)
}

fn percent(per_mille: i64) -> String {
    format!("{}.{} %", per_mille / 10, per_mille % 10)
}

fn price(per_kwh: i64) -> String {
    format!("{}.{:03}", per_kwh / 1_000_000, per_kwh % 1_000_000 / 1_000)
}

/// A Markdown table: the header row, its rule, then a row of cells per entry of `rows`.
fn table(text: &mut String, header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let _ = writeln!(text, "| {} |", header.join(" | "));
    let _ = writeln!(text, "|{}", "---|".repeat(header.len()));
    for row in rows {
        let _ = writeln!(text, "| {} |", row.join(" | "));
    }
}

/// The report's text: a table per figure and the charts.
pub fn markdown(options: &ReportOptions, summaries: &[Summary]) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# Market report: {} homes, {} day(s)\n\nGenerated by `gridex demo --homes {} --days {} --report DIR` \
         (fixed seeds: the same command gives the same figures).\n",
        options.homes, options.days, options.homes, options.days
    );
    let header = [
        "variant",
        "self-sufficiency",
        "export sold p2p",
        "savings vs utility",
        "of which market",
        "worst household",
        "sellers over feed-in",
        "traded",
        "delivered p2p / possible",
        "mean price €/kWh",
        "spread",
        "GRID emitted",
        "batteries",
        "stored / returned",
        "storage losses",
    ];
    table(
        &mut text,
        &header,
        summaries.iter().map(|summary| {
            vec![
                summary.variant.to_owned(),
                percent(summary.self_sufficiency_per_mille),
                percent(summary.p2p_export_share_per_mille),
                euros(summary.household_savings),
                euros(summary.market_savings),
                euros(summary.worst_household_savings),
                euros(summary.sellers_over_feed_in),
                format!("{:.1} kWh", summary.traded_wh as f64 / 1000.0),
                format!(
                    "{:.1} / {:.1} kWh",
                    summary.delivered_p2p_wh as f64 / 1000.0,
                    summary.p2p_potential_wh as f64 / 1000.0
                ),
                price(summary.price_mean_per_kwh),
                price(summary.price_spread_per_kwh),
                (summary.tokens_emitted / 1_000_000).to_string(),
                summary.batteries.to_string(),
                format!(
                    "{:.1} / {:.1} kWh",
                    summary.battery_charged_wh as f64 / 1000.0,
                    summary.battery_discharged_wh as f64 / 1000.0
                ),
                format!("{:.1} kWh", summary.battery_losses_wh as f64 / 1000.0),
            ]
        }),
    );
    let _ = writeln!(
        text,
        "\nThe closing auction on each variant's own orders (the same commands at the same times, once per rule):\n"
    );
    table(
        &mut text,
        &["orders of", "continuous", "closing auction"],
        summaries.iter().map(|summary| {
            vec![
                summary.variant.to_owned(),
                format!("{:.1} kWh", summary.same_orders_continuous_wh as f64 / 1000.0),
                format!("{:.1} kWh", summary.same_orders_auction_wh as f64 / 1000.0),
            ]
        }),
    );
    let _ = writeln!(
        text,
        "\n![Savings per variant](savings.svg)\n\n![Share of exports sold peer to peer](p2p_share.svg)\n\n![Self-sufficiency](self_sufficiency.svg)\n\n![Mean price per slot](prices.svg)\n"
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_statistics_are_volume_weighted() {
        assert_eq!(price_stats(&[(100, 1), (300, 1)]), (200, 100));
        assert_eq!(price_stats(&[(100, 3), (300, 1)]), (150, 86));
        assert_eq!(price_stats(&[]), (0, 0));
    }

    #[test]
    fn a_household_whose_energy_does_not_balance_fails_the_report() {
        let variant = VARIANTS[5];
        assert!(variant.batteries && variant.quoting);
        let mut outcome = sim::simulate(3, 1, variant);
        check(variant, &outcome).expect("the real outcome balances");
        assert!(outcome.households.iter().any(|h| h.has_battery && h.energy.charged_mwh > 0), "a battery worked");
        let real = outcome.clone();
        // A single mWh of load that came from nowhere.
        outcome.households[0].energy.load_mwh += 1;
        let error = check(variant, &outcome).expect_err("one mWh too much load");
        assert!(error.check.contains("pv + import"), "{error}");
        // Losses the battery never had.
        outcome = real.clone();
        outcome.households[0].energy.losses_mwh += 1;
        outcome.households[0].energy.load_mwh -= 1;
        assert!(check(variant, &outcome).is_err(), "the battery's own balance");
        // A settled Wh the meter never counted.
        outcome = real;
        outcome.households[0].metered_import_wh += 2;
        assert!(check(variant, &outcome).is_err(), "the settlement's meter");
    }

    #[test]
    fn euros_have_two_decimals() {
        assert_eq!(euros(7_080_000), "€7.08");
        assert_eq!(euros(-50_000), "-€0.05");
    }
}
