//! The shipped register-map profiles, each read over real Modbus TCP (tokio-modbus's server) from a
//! register dump built from the maker's published register map (tests/fixtures/*.dump), through the
//! profile code path the gateway uses; and values no meter can mean are refused.

mod common;

use common::{client, serve_bank, Served};
use meter_gateway::gateway::{GatewayError, Source};
use meter_gateway::profile::{Profile, ProfileError, ProfileValues, ValueRefusal};
use meter_gateway::simulator::RegisterBank;

/// Loads a register dump: lines of `ADDRESS WORD...` (holding registers) or `input ADDRESS WORD...`
/// (input registers), the address in decimal and the words in hex; `#` starts a comment line.
fn load_dump(text: &str) -> RegisterBank {
    let mut bank = RegisterBank::default();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')) {
        let mut fields = line.split_whitespace().peekable();
        let input = fields.next_if_eq(&"input").is_some();
        let addr: u16 = fields.next().expect("address").parse().expect("decimal address");
        let words: Vec<u16> =
            fields.map(|word| u16::from_str_radix(word.trim_start_matches("0x"), 16).expect("hex word")).collect();
        if input {
            bank.set_input(addr, &words);
        } else {
            bank.set_holding(addr, &words);
        }
    }
    bank
}

/// Serves `dump` and reads it through the profile `name` (a shipped name or alias).
async fn read_dump(name: &str, dump: &str) -> (Profile, ProfileValues, Served) {
    let served = serve_bank(load_dump(dump)).await;
    let profile = Profile::load(name).expect("shipped");
    let values = profile.read(&mut client(served.addr)).await.expect("reads");
    (profile, values, served)
}

#[tokio::test]
async fn the_eastron_sdm72_profile_reads_its_register_dump() {
    let (profile, values, served) = read_dump("sdm72", include_str!("fixtures/eastron-sdm72.dump")).await;
    assert_eq!(profile.name, "eastron-sdm72");
    // float32 12345.678 is 12345.677734375 kWh: 12 345 677.73 Wh, rounded.
    assert_eq!(values.import_wh, Some(12_345_678));
    assert_eq!(values.export_wh, Some(2_345_500));
    assert_eq!(values.power_w, Some(-1_235), "-1234.5 W rounds away from zero; exporting");
    assert_eq!(values.counter_modulus_wh, None, "float counters do not wrap");
    // The gateway's read path gives the same sample.
    let sample = Source::Profile(profile).read(&mut client(served.addr)).await.expect("a sample");
    assert_eq!((sample.import_wh, sample.export_wh, sample.power_w), (Some(12_345_678), Some(2_345_500), Some(-1_235)));
}

#[tokio::test]
async fn the_eastron_sdm120_profile_reads_its_register_dump() {
    let (profile, values, _served) = read_dump("sdm120", include_str!("fixtures/eastron-sdm120.dump")).await;
    assert_eq!(profile.name, "eastron-sdm120");
    assert_eq!(values.import_wh, Some(456_789));
    assert_eq!(values.export_wh, Some(12_250));
    assert_eq!(values.power_w, Some(231), "230.75 W");
}

#[tokio::test]
async fn the_abb_b23_profile_reads_its_register_dump() {
    let (profile, values, _served) = read_dump("b23", include_str!("fixtures/abb-b23.dump")).await;
    assert_eq!(profile.name, "abb-b23");
    assert_eq!(values.import_wh, Some(1_234_567_890), "123456789 × 0.01 kWh");
    assert_eq!(values.export_wh, Some(98_765_430));
    assert_eq!(values.power_w, Some(3_457), "345678 × 0.01 W = 3456.78 W, rounded");
    assert_eq!(values.serial.as_deref(), Some("12345678"));
    assert_eq!(values.counter_modulus_wh, None, "64-bit counters do not wrap in a lifetime");
}

#[tokio::test]
async fn the_schneider_iem3155_profile_reads_its_register_dump() {
    let (profile, values, _served) = read_dump("iem3155", include_str!("fixtures/schneider-iem3000.dump")).await;
    assert_eq!(profile.name, "schneider-iem3000");
    assert_eq!(values.import_wh, Some(7_654_321));
    assert_eq!(values.export_wh, Some(1_234_567));
    assert_eq!(values.power_w, Some(-2_500), "-2.5 kW, exporting");
}

#[tokio::test]
async fn a_profile_reading_the_wrong_register_table_fails_rather_than_reading_zeros() {
    // The SDM72's values are input registers: the same dump as holding registers does not answer.
    let dump = include_str!("fixtures/eastron-sdm72.dump").replace("input ", "");
    let served = serve_bank(load_dump(&dump)).await;
    let refused = Profile::load("sdm72").expect("shipped").read(&mut client(served.addr)).await;
    assert!(matches!(refused, Err(ProfileError::Modbus(_))), "{refused:?}");
}

fn abb_bank(import: [u16; 4]) -> RegisterBank {
    let mut bank = load_dump(include_str!("fixtures/abb-b23.dump"));
    bank.set_holding(0x5000, &import);
    bank
}

#[tokio::test]
async fn a_counter_beyond_the_representable_range_is_refused_with_a_clear_error() {
    // 2^56 × 0.01 kWh is 7.2e17 Wh: far past 2^53 (a float would silently round it).
    let served = serve_bank(abb_bank([0x0100, 0x0000, 0x0000, 0x0000])).await;
    let profile = Profile::load("abb-b23").expect("shipped");
    let refused = profile.read(&mut client(served.addr)).await;
    match &refused {
        Err(ProfileError::Value { profile, quantity: "import_wh", raw, refusal: ValueRefusal::OutOfRange }) => {
            assert_eq!(profile, "abb-b23");
            assert_eq!(raw, "72057594037927936");
        }
        other => panic!("expected an out-of-range refusal, got {other:?}"),
    }
    let message = refused.expect_err("refused").to_string();
    assert!(message.contains("abb-b23") && message.contains("import_wh") && message.contains("2^53"), "{message}");
    // The gateway publishes nothing from it.
    let sample = Source::Profile(profile).read(&mut client(served.addr)).await;
    assert!(matches!(sample, Err(GatewayError::Profile(ProfileError::Value { .. }))), "{sample:?}");

    // A negative lifetime counter is refused too; the meter's own "not available" is absent.
    let mut bank = load_dump(include_str!("fixtures/schneider-iem3000.dump"));
    bank.set_holding(3203, &[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFB]); // -5 Wh
    let served = serve_bank(bank).await;
    let refused = Profile::load("iem3000").expect("shipped").read(&mut client(served.addr)).await;
    assert!(
        matches!(refused, Err(ProfileError::Value { quantity: "import_wh", refusal: ValueRefusal::Negative, .. })),
        "{refused:?}"
    );
    let served = serve_bank(abb_bank([0xFFFF; 4])).await;
    let values = Profile::load("abb-b23").expect("shipped").read(&mut client(served.addr)).await.expect("reads");
    assert_eq!(values.import_wh, None, "ABB's all-ones is not available, not 1.8e20 Wh");
    assert_eq!(values.export_wh, Some(98_765_430));
}

#[tokio::test]
async fn the_carlo_gavazzi_em24_profile_reads_its_register_dump_low_word_first() {
    let (profile, values, _served) = read_dump("em24", include_str!("fixtures/carlo-gavazzi-em24.dump")).await;
    assert_eq!(profile.name, "carlo-gavazzi-em24");
    assert_eq!(values.import_wh, Some(12_345_600), "123456 × 0.1 kWh");
    assert_eq!(values.export_wh, Some(789_100));
    assert_eq!(values.power_w, Some(-123), "-1234 × 0.1 W, exporting");
    assert_eq!(values.counter_modulus_wh, Some(429_496_729_600), "a 32-bit counter in 0.1 kWh wraps");
}
