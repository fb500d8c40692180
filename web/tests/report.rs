//! The market report at CI size (10 homes, 1 day): it runs faster than real time, every variant's
//! figures balance (checked by the report itself before it writes anything), nobody running the new
//! agent ends worse off than with the utility alone, no trade is beyond an owner's limit or cap, the
//! same seeds give the same figures, and the charts and text are written. The battery variants run
//! too: every home's energy balances to the mWh (pv + import = load + export + storage change +
//! losses), the batteries store and return energy, and the households save more than without them.

use web::report::{self, sim, ReportOptions};

#[test]
fn the_report_at_ci_size_balances_and_leaves_no_household_worse_off() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let options = ReportOptions { homes: 10, days: 1, dir: dir.path().to_path_buf() };
    let summaries = report::run(&options).expect("every variant balances and the report is written");
    assert_eq!(summaries.len(), sim::VARIANTS.len());
    for file in ["report.md", "savings.svg", "p2p_share.svg", "self_sufficiency.svg", "prices.svg"] {
        let bytes = std::fs::read(dir.path().join(file)).unwrap_or_else(|error| panic!("{file}: {error}"));
        assert!(bytes.len() > 200, "{file} is written");
    }
    let text = std::fs::read_to_string(dir.path().join("report.md")).expect("the report");
    for summary in &summaries {
        assert!(text.contains(summary.variant), "the report shows {}", summary.variant);
        assert!(summary.traded_wh > 0, "{} traded", summary.variant);
        assert!(
            summary.delivered_p2p_wh <= summary.p2p_potential_wh,
            "{}: more delivered than possible",
            summary.variant
        );
    }
    for (variant, summary) in sim::VARIANTS.iter().zip(&summaries) {
        if variant.quoting {
            assert!(summary.worst_household_savings >= 0, "{}: a household is worse off: {summary:?}", variant.name);
        }
    }
}

#[test]
fn the_same_seeds_give_the_same_market_and_every_trade_is_within_its_owners_limits() {
    let variant = sim::VARIANTS[3];
    let first = sim::simulate(6, 1, variant);
    let second = sim::simulate(6, 1, variant);
    assert_eq!(first.trade_prices, second.trade_prices);
    assert_eq!(first.households, second.households);
    report::check(variant, &first).expect("balanced, within limits and caps");
    assert_eq!(first.limit_violations, 0);
}

#[test]
fn an_outcome_that_does_not_balance_is_refused() {
    let variant = sim::VARIANTS[0];
    let mut outcome = sim::simulate(3, 1, variant);
    report::check(variant, &outcome).expect("the real outcome balances");
    outcome.traded_wh += 1;
    assert!(report::check(variant, &outcome).is_err(), "a kWh traded that nobody bought");
    outcome.traded_wh -= 1;
    outcome.grid_fees += 1;
    assert!(report::check(variant, &outcome).is_err(), "a fee that nobody paid");
}

#[test]
fn with_batteries_every_home_balances_to_the_mwh_and_the_community_saves_more() {
    let without = sim::VARIANTS[2];
    let with = sim::VARIANTS[5];
    assert!(with.batteries && with.quoting && !without.batteries);
    let plain = sim::simulate(10, 1, without);
    let outcome = sim::simulate(10, 1, with);
    report::check(with, &outcome).expect("every home balances to the mWh, within limits and caps");
    let batteries: Vec<&sim::Household> = outcome.households.iter().filter(|h| h.has_battery).collect();
    assert_eq!(batteries.len(), 4, "half of the 7 solar homes among 10, rounded up");
    for household in &outcome.households {
        let e = household.energy;
        assert_eq!(e.pv_mwh + e.import_mwh, e.load_mwh + e.export_mwh + e.stored_change_mwh + e.losses_mwh);
        if household.has_battery {
            assert!(e.charged_mwh > 1_000_000 && e.discharged_mwh > 1_000_000, "the battery cycled: {e:?}");
            assert!(e.losses_mwh > 0);
        } else {
            assert_eq!((e.charged_mwh, e.discharged_mwh, e.losses_mwh), (0, 0, 0));
        }
    }
    let summary = report::Summary::of(with, &outcome);
    let baseline = report::Summary::of(without, &plain);
    assert!(summary.household_savings > baseline.household_savings, "{summary:?} vs {baseline:?}");
    assert!(summary.self_sufficiency_per_mille > baseline.self_sufficiency_per_mille + 100, "{summary:?}");
    assert!(summary.worst_household_savings >= 0, "{summary:?}");
}
