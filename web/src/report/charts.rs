//! The report's charts, drawn with plotters' SVG backend (no system fonts or image libraries: the SVG
//! names a generic font family and the viewer draws the text).

use super::sim::{Outcome, Variant, MINUTE_MS, START_MS};
use super::Summary;
use anyhow::Context as _;
use plotters::prelude::*;
use std::path::Path;

/// Chart size in SVG pixels.
const WIDTH: u32 = 1_300;
const HEIGHT: u32 = 420;
/// Space between bars.
const BAR_MARGIN_PX: u32 = 24;
/// One colour per variant, in [`super::sim::VARIANTS`] order.
const COLOURS: [RGBColor; 6] = [
    RGBColor(150, 150, 150),
    RGBColor(90, 90, 90),
    RGBColor(46, 134, 222),
    RGBColor(16, 72, 160),
    RGBColor(120, 190, 120),
    RGBColor(30, 130, 60),
];

pub fn write_all(dir: &Path, summaries: &[Summary], outcomes: &[(Variant, Outcome)]) -> anyhow::Result<()> {
    let savings: Vec<f64> = summaries.iter().map(|s| s.household_savings as f64 / 1_000_000.0).collect();
    bars(&dir.join("savings.svg"), "Households' savings against the utility alone (€)", summaries, &savings)?;
    let shares: Vec<f64> = summaries.iter().map(|s| s.p2p_export_share_per_mille as f64 / 10.0).collect();
    bars(&dir.join("p2p_share.svg"), "Share of exported energy sold peer to peer (%)", summaries, &shares)?;
    let sufficiency: Vec<f64> = summaries.iter().map(|s| s.self_sufficiency_per_mille as f64 / 10.0).collect();
    bars(&dir.join("self_sufficiency.svg"), "Self-sufficiency of the community (%)", summaries, &sufficiency)?;
    prices(&dir.join("prices.svg"), outcomes)
}

fn bars(path: &Path, title: &str, summaries: &[Summary], values: &[f64]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let top = values.iter().copied().fold(0.0f64, f64::max) * 1.15 + 1e-9;
        let bottom = values.iter().copied().fold(0.0f64, f64::min).min(0.0) * 1.15;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d((0..summaries.len() as i32 - 1).into_segmented(), bottom..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(summaries.len())
            .x_label_formatter(&|segment| match segment {
                SegmentValue::CenterOf(index) => {
                    summaries.get(*index as usize).map_or(String::new(), |s| s.variant.to_owned())
                }
                _ => String::new(),
            })
            .draw()?;
        for (index, value) in values.iter().enumerate() {
            let colour = COLOURS[index % COLOURS.len()];
            let x = index as i32;
            let mut bar =
                Rectangle::new([(SegmentValue::Exact(x), 0.0), (SegmentValue::Exact(x + 1), *value)], colour.filled());
            bar.set_margin(0, 0, BAR_MARGIN_PX, BAR_MARGIN_PX);
            chart.draw_series(std::iter::once(bar))?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|error| anyhow::anyhow!("{error}")).with_context(|| format!("cannot draw {}", path.display()))
}

fn prices(path: &Path, outcomes: &[(Variant, Outcome)]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    let hours = |slot_ms: i64| (slot_ms - START_MS) as f64 / (60.0 * MINUTE_MS as f64);
    let end = outcomes
        .iter()
        .flat_map(|(_, outcome)| outcome.slot_prices.iter().map(|(slot, _, _)| hours(*slot)))
        .fold(1.0f64, f64::max);
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Volume-weighted trade price per slot (€/kWh) against hours from the start", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..end, 0.05f64..0.32f64)?;
        chart.configure_mesh().draw()?;
        for (index, (variant, outcome)) in outcomes.iter().enumerate() {
            let colour = COLOURS[index % COLOURS.len()];
            let points = outcome.slot_prices.iter().map(|(slot, price, _)| (hours(*slot), *price as f64 / 1_000_000.0));
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
                .label(variant.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|error| anyhow::anyhow!("{error}")).with_context(|| format!("cannot draw {}", path.display()))
}
