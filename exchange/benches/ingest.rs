//! `ingest`: the verification stage on batches of signed readings (strict parse, topic check,
//! registered key, batch signature verification, timestamp window, seq, plausibility) against a
//! bare loop of single `verify_strict` calls on the same messages, in the same run.
//!
//! `cargo bench -p exchange --bench ingest`; the ratio is printed at the end.

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use exchange::config::ExchangeConfig;
use exchange::ingest::{self, DeviceState, Directory, Kind, Limits, Origin, Verifier, ZoneInfo};
use protocol::{DeviceId, MeterSerial, PowerW, Reading, Signed, TimestampMs, Wh, ZoneId};
use std::time::Duration;

const NOW_MS: i64 = 1_790_000_000_000;
/// Batch sizes: the verifier's default batch (256) and a small one.
const BATCHES: [usize; 2] = [64, 256];

struct Fixture {
    verifier: Verifier,
    messages: Vec<(Origin, Vec<u8>)>,
    parsed: Vec<Signed<Reading>>,
}

fn fixture(count: usize) -> Fixture {
    let zone = ZoneId::parse("bench").expect("a zone id");
    let mut directory = Directory::default();
    directory.zones.insert(zone.clone(), ZoneInfo { slot_len_ms: 900_000 });
    let mut messages = Vec::with_capacity(count);
    let mut parsed = Vec::with_capacity(count);
    for index in 0..count {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(index as u64 + 1).to_le_bytes());
        let key = SigningKey::from_bytes(&seed);
        let device = DeviceId::from_verifying_key(&key.verifying_key());
        directory.devices.insert(
            device,
            DeviceState { zone: zone.clone(), nameplate_w: 10_000, last: None, replacements: Vec::new() },
        );
        let reading = Reading {
            device,
            zone: zone.clone(),
            meter_serial: MeterSerial::parse("SN-0001").expect("a serial"),
            seq: 1,
            ts_ms: TimestampMs(NOW_MS - 1_000),
            import_wh: Wh(1_234_567),
            export_wh: Wh(7_654_321),
            pv_wh: Some(Wh(9_000_000)),
            power_w: PowerW(-2_500),
        };
        let signed = Signed::sign(reading, &key).expect("sign");
        let origin = Origin::Mqtt { zone: zone.to_string(), sender: device.to_hex() };
        messages.push((origin, signed.to_json()));
        parsed.push(signed);
    }
    let mut verifier = Verifier::new(Limits::from(&ExchangeConfig::default()));
    verifier.directory = directory;
    Fixture { verifier, messages, parsed }
}

fn pipeline(verifier: &mut Verifier, messages: &[(Origin, Vec<u8>)]) -> usize {
    let parsed = messages.iter().map(|(origin, bytes)| ingest::parse(Kind::Reading, origin, bytes)).collect();
    verifier.check(parsed, NOW_MS).iter().filter(|result| result.is_ok()).count()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingest");
    group.measurement_time(Duration::from_secs(8));
    for batch in BATCHES {
        let fixture = fixture(batch);
        assert_eq!(pipeline(&mut fixture.verifier.clone(), &fixture.messages), batch, "every message passes");
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("pipeline_batch_verify", batch), &fixture, |b, fixture| {
            b.iter_batched_ref(
                || fixture.verifier.clone(),
                |verifier| pipeline(verifier, &fixture.messages),
                BatchSize::SmallInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("bare_verify_strict", batch), &fixture, |b, fixture| {
            b.iter(|| fixture.parsed.iter().filter(|signed| signed.verify().is_ok()).count())
        });
    }
    group.finish();
}

/// Reads criterion's point estimate (ns per iteration) of one benchmark.
fn estimate_ns(name: &str, batch: usize) -> Option<f64> {
    let target =
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| format!("{}/../target", env!("CARGO_MANIFEST_DIR")));
    let path = format!("{target}/criterion/ingest/{name}/{batch}/new/estimates.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    for batch in BATCHES {
        if let (Some(pipeline), Some(bare)) =
            (estimate_ns("pipeline_batch_verify", batch), estimate_ns("bare_verify_strict", batch))
        {
            let per_second = |ns: f64| batch as f64 / (ns / 1e9);
            println!(
                "batch {batch}: pipeline {:.0} msg/s, bare verify_strict {:.0} msg/s, ratio {:.2}x",
                per_second(pipeline),
                per_second(bare),
                bare / pipeline
            );
        }
    }
}
