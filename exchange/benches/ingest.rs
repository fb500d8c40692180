//! `ingest`: the verification stage on batches of signed readings (strict parse, topic check,
//! registered key, signature verification under PROTOCOL.md §2, timestamp window, seq,
//! plausibility) against a bare loop of single `verify_strict` calls on the same messages, in the
//! same run. Three more references on the same, already parsed, messages: `protocol::verify_batch`
//! alone; ed25519-dalek's random-coefficient `verify_batch` alone (what the exchange used before
//! issue 11: fast, but it accepts a torsion component in R about half the time); and that batch
//! after checking every R for the prime-order subgroup (the strict way to use it). The file builds
//! on the code before issue 11 too, for before/after figures.
//!
//! `cargo bench -p exchange --bench ingest`; the ratios to `bare_verify_strict` are printed at the
//! end, from criterion's estimates and from a second, interleaved measurement (every benchmark
//! once per round, median of the rounds), which is the one to trust on a shared machine;
//! `cargo bench -p exchange --bench ingest -- interleaved` runs only the latter (about 15 s).

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use exchange::config::ExchangeConfig;
use exchange::ingest::{self, DeviceState, Directory, Kind, Limits, Origin, Verifier, ZoneInfo};
use protocol::{DeviceId, Reading, Signed, TimestampMs, ZoneId};
use std::hint::black_box;
use std::time::{Duration, Instant};

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
            DeviceState {
                zone: zone.clone(),
                nameplate_w: 10_000,
                last: None,
                replacements: Vec::new(),
                battery: Default::default(),
            },
        );
        let reading = Reading {
            zone: zone.clone(),
            seq: 1,
            ts_ms: TimestampMs(NOW_MS - 1_000),
            ..protocol::testing::sample_reading(&key)
        };
        let signed = Signed::sign(reading, &key).expect("sign");
        let origin = Origin::Mqtt { version: protocol::Version::V1, zone: zone.to_string(), sender: device.to_hex() };
        messages.push((origin, signed.to_json()));
        parsed.push(signed);
    }
    let mut verifier = Verifier::new(Limits::from(&ExchangeConfig::new(protocol::testing::operator_key())));
    verifier.directory = directory;
    Fixture { verifier, messages, parsed }
}

fn pipeline(verifier: &mut Verifier, messages: &[(Origin, Vec<u8>)]) -> usize {
    let parsed = messages.iter().map(|(origin, bytes)| ingest::parse(Kind::Reading, origin, bytes)).collect();
    verifier.check(parsed, NOW_MS).iter().filter(|result| result.is_ok()).count()
}

/// Whether R is a canonical encoding of a point of the prime-order subgroup, not of small order
/// (PROTOCOL.md §2, step 3), with ed25519-dalek's API alone so that the bench builds on old code too.
fn r_is_strict(signature: &[u8; 64]) -> bool {
    let mut r = [0u8; 32];
    r.copy_from_slice(&signature[..32]);
    VerifyingKey::from_bytes(&r).is_ok_and(|point| {
        let point = point.to_edwards();
        point.compress().to_bytes() == r && !point.is_small_order() && point.is_torsion_free()
    })
}

/// ed25519-dalek's random-coefficient batch check of `parsed`, optionally after checking each R.
fn dalek_batch(parsed: &[Signed<Reading>], keys: &[VerifyingKey], check_r: bool) -> usize {
    if check_r && !parsed.iter().all(|signed| r_is_strict(&signed.signature)) {
        return 0;
    }
    let messages: Vec<&[u8]> = parsed.iter().map(|signed| signed.signing_bytes()).collect();
    let signatures: Vec<Signature> = parsed.iter().map(|signed| Signature::from_bytes(&signed.signature)).collect();
    ed25519_dalek::verify_batch(&messages, &signatures, keys).map_or(0, |()| parsed.len())
}

/// The reference: what `Signed::verify` did before issue 11 (decode the key, `verify_strict`), in
/// ed25519-dalek alone, so that it does not change with the code under test.
fn bare_verify_strict(parsed: &[Signed<Reading>]) -> usize {
    let verifies = |signed: &&Signed<Reading>| {
        VerifyingKey::from_bytes(&signed.message.device.0).is_ok_and(|key| {
            key.verify_strict(signed.signing_bytes(), &Signature::from_bytes(&signed.signature)).is_ok()
        })
    };
    parsed.iter().filter(verifies).count()
}

fn protocol_verify_batch(parsed: &[Signed<Reading>]) -> usize {
    let refs: Vec<&Signed<Reading>> = parsed.iter().collect();
    protocol::verify_batch(&refs).iter().filter(|verdict| verdict.is_ok()).count()
}

/// The benchmarks; the first is the reference of the ratios.
const NAMES: [&str; 5] = [
    "bare_verify_strict",
    "pipeline_batch_verify",
    "bare_protocol_verify_batch",
    "bare_dalek_batch_unchecked",
    "bare_dalek_batch_checked_r",
];

/// Runs benchmark `NAMES[method]` once on `fixture`; `verifier` is a fresh clone for the pipeline.
fn run(method: usize, fixture: &Fixture, keys: &[VerifyingKey], verifier: &mut Verifier) -> usize {
    match method {
        0 => bare_verify_strict(&fixture.parsed),
        1 => pipeline(verifier, &fixture.messages),
        2 => protocol_verify_batch(&fixture.parsed),
        3 => dalek_batch(&fixture.parsed, keys, false),
        _ => dalek_batch(&fixture.parsed, keys, true),
    }
}

fn keys_of(fixture: &Fixture) -> Vec<VerifyingKey> {
    fixture.parsed.iter().map(|signed| VerifyingKey::from_bytes(&signed.message.device.0).expect("a key")).collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingest");
    group.measurement_time(Duration::from_secs(8));
    for batch in BATCHES {
        let fixture = fixture(batch);
        let keys = keys_of(&fixture);
        for (method, name) in NAMES.iter().enumerate() {
            assert_eq!(run(method, &fixture, &keys, &mut fixture.verifier.clone()), batch, "{name}: all pass");
        }
        group.throughput(Throughput::Elements(batch as u64));
        for (method, name) in NAMES.iter().enumerate() {
            group.bench_with_input(BenchmarkId::new(*name, batch), &fixture, |b, fixture| {
                b.iter_batched_ref(
                    || fixture.verifier.clone(),
                    |verifier| run(method, fixture, &keys, verifier),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

/// Rounds of the interleaved measurement: each round times every benchmark once, back to back, so
/// that a neighbour's load falls on all of them alike; the median round is reported.
const INTERLEAVED_ROUNDS: usize = 61;
/// Batches per benchmark and round: about 30 ms at 256 messages, long enough to dwarf the timer.
const INTERLEAVED_BATCHES_PER_ROUND: usize = 2;

/// Median over interleaved rounds of each benchmark's ns per batch.
fn interleaved_ns(fixture: &Fixture) -> Vec<f64> {
    let keys = keys_of(fixture);
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(INTERLEAVED_ROUNDS); NAMES.len()];
    for _ in 0..INTERLEAVED_ROUNDS {
        for (method, times) in samples.iter_mut().enumerate() {
            let mut verifiers: Vec<Verifier> = vec![fixture.verifier.clone(); INTERLEAVED_BATCHES_PER_ROUND];
            let start = Instant::now();
            for verifier in &mut verifiers {
                black_box(run(method, fixture, &keys, verifier));
            }
            times.push(start.elapsed().as_nanos() as f64 / INTERLEAVED_BATCHES_PER_ROUND as f64);
        }
    }
    samples
        .into_iter()
        .map(|mut times| {
            times.sort_by(f64::total_cmp);
            times[times.len() / 2]
        })
        .collect()
}

/// Reads criterion's point estimate (ns per iteration) of one benchmark.
fn estimate_ns(name: &str, batch: usize) -> Option<f64> {
    let target =
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| format!("{}/../target", env!("CARGO_MANIFEST_DIR")));
    let path = format!("{target}/criterion/ingest/{name}/{batch}/new/estimates.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn print_ratios(how: &str, batch: usize, ns: &[Option<f64>]) {
    let Some(reference) = ns[0] else { return };
    for (name, ns) in NAMES.iter().zip(ns) {
        if let Some(ns) = ns {
            let per_second = batch as f64 / (ns / 1e9);
            println!("{how} batch {batch}: {name:<28} {per_second:>8.0} msg/s, {:.2}x verify_strict", reference / ns);
        }
    }
}

fn main() {
    // `cargo bench -p exchange --bench ingest -- interleaved` runs only the interleaved measurement.
    if !std::env::args().any(|arg| arg == "interleaved") {
        let mut criterion = Criterion::default().configure_from_args();
        bench(&mut criterion);
        criterion.final_summary();
        for batch in BATCHES {
            let ns: Vec<Option<f64>> = NAMES.iter().map(|name| estimate_ns(name, batch)).collect();
            print_ratios("criterion", batch, &ns);
        }
    }
    for batch in BATCHES {
        let ns: Vec<Option<f64>> = interleaved_ns(&fixture(batch)).into_iter().map(Some).collect();
        print_ratios("interleaved", batch, &ns);
    }
}
